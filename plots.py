"""Figures a person reads: reconstruction grids, latent plots, loss curves, schedules.

Every function takes plain numpy arrays (or a decode function) and a path, and
writes one PNG atomically.
"""

import matplotlib

matplotlib.use("Agg")  # No display on servers and CI.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from runs import atomic_save  # noqa: E402


def _save(fig, path):
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=80, bbox_inches="tight", format="png"))
    plt.close(fig)


def pick_one_per_class(labels, per_class=1):
    """Indices of the first `per_class` examples of every label, ordered by label."""
    chosen = []
    for label in np.unique(labels):
        chosen.extend(np.flatnonzero(labels == label)[:per_class].tolist())
    return np.array(chosen)


def image_rows(rows, row_titles, col_titles, path, title=None):
    """A grid of 28×28 images: one row per entry of `rows` (each (n, 28, 28, 1)), labelled."""
    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.0 * n_cols + 1.6, 1.05 * n_rows + 0.5), squeeze=False)
    for r, (images, row_title) in enumerate(zip(rows, row_titles)):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(np.clip(images[c, ..., 0], 0, 1), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and col_titles is not None:
                ax.set_title(str(col_titles[c]), fontsize=9)
        axes[r, 0].set_ylabel(row_title, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def reconstructions(originals, recons, labels, path, title=None):
    """Originals on top, their reconstructions beneath, each column labelled with its class."""
    image_rows([originals, recons], ["input", "reconstruction"], labels, path, title)


def latent_manifold(decode, path, n=20, scale=1.0, extent=None):
    """The tutorial's plot: digits decoded on an n×n grid of z in extent (xmin, xmax, ymin, ymax), 2-D latents."""
    extent = extent or (-scale, scale, -scale, scale)
    grid_x = np.linspace(extent[0], extent[1], n, dtype="float32")
    grid_y = np.linspace(extent[2], extent[3], n, dtype="float32")
    z = np.array([[xi, yi] for yi in grid_y[::-1] for xi in grid_x], dtype="float32")  # (n*n, 2), top row = max y
    images = decode(z)[..., 0].reshape(n, n, 28, 28)
    figure = images.transpose(0, 2, 1, 3).reshape(n * 28, n * 28)
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(figure, cmap="Greys_r", extent=extent, aspect="auto")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("Digits decoded across the latent space")
    _save(fig, path)


def latent_clusters(z_mean, labels, path, dims=(0, 1)):
    """Posterior means of validation digits, coloured by class, on two latent dimensions."""
    fig, ax = plt.subplots(figsize=(7, 6))
    if z_mean.shape[1] == 1:
        points = ax.scatter(z_mean[:, 0], np.zeros(len(z_mean)), c=labels, cmap="tab10", s=4)
    else:
        points = ax.scatter(z_mean[:, dims[0]], z_mean[:, dims[1]], c=labels, cmap="tab10", s=4)
        ax.set_ylabel(f"z_mean[{dims[1]}]")
    fig.colorbar(points, ax=ax, label="digit")
    ax.set_xlabel(f"z_mean[{dims[0]}]")
    ax.set_title("Validation digits in the latent space (posterior means)")
    _save(fig, path)


def loss_curves(history, path):
    """Training and validation curves per epoch: the objective, reconstruction, KL and -ELBO."""
    epochs = [row["epoch"] for row in history]
    panels = [("loss", "training objective"), ("reconstruction", "reconstruction (nats/digit)"),
              ("kl", "KL (nats/digit)"), ("neg_elbo", "-ELBO (nats/digit)")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(epochs, [row[key] for row in history], marker="o", label="train")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], marker="o", label="validation")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.legend()
    _save(fig, path)


def kl_schedule(steps, weights, epoch_steps, epoch_weights, path):
    """The KL weight in force at every step, with the value logged at the end of each epoch."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, weights, label="weight in force")
    ax.scatter(epoch_steps, epoch_weights, color="C3", zorder=3, label="logged per epoch")
    ax.set_xlabel("training step")
    ax.set_ylabel("KL weight")
    ax.set_title("KL weight schedule")
    ax.legend()
    _save(fig, path)


def kl_per_dimension(kl_per_dim, active, path, information=None):
    """Bar chart of the average KL of each latent dimension; active units in colour."""
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(kl_per_dim) + 2), 3.5))
    colors = ["C0" if a else "lightgray" for a in active]
    ax.bar(np.arange(len(kl_per_dim)), kl_per_dim, color=colors)
    ax.set_xlabel("latent dimension (grey: inactive)")
    ax.set_ylabel("KL (nats/digit)")
    ax.set_title("KL per latent dimension")
    _save(fig, path)


def rate_distortion(points, path, title="Rate-distortion", collapsed=None):
    """Points (rate = KL, distortion = reconstruction) joined in order, each labelled.

    Args:
        points: list of (label, kl, reconstruction).
        collapsed: optional list of booleans; collapsed points are drawn as red crosses.
    """
    fig, ax = plt.subplots(figsize=(7, 5))
    kls = [p[1] for p in points]
    recs = [p[2] for p in points]
    if collapsed is None:
        ax.plot(kls, recs, marker="o", markersize=3 if len(points) > 30 else 6, color="C0")
    else:
        for kl, rec, bad in zip(kls, recs, collapsed):
            ax.scatter(kl, rec, marker="x" if bad else "o", color="C3" if bad else "C0", s=60)
    # A long path gets about ten labels (and always its last point) so the labels stay legible.
    step = 1 if collapsed is not None else max(1, len(points) // 10)
    for i, (label, kl, rec) in enumerate(points):
        if i % step == 0 or i == len(points) - 1:
            ax.annotate(str(label), (kl, rec), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("rate: KL (nats/digit)")
    ax.set_ylabel("distortion: reconstruction NLL (nats/digit)")
    ax.set_title(title)
    _save(fig, path)


def samples(images, path, title="Samples from the prior"):
    """A square grid of images (n, 28, 28, 1)."""
    side = int(np.sqrt(len(images)))
    grid = images[: side * side, ..., 0].reshape(side, side, 28, 28).transpose(0, 2, 1, 3)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(grid.reshape(side * 28, side * 28), cmap="Greys_r", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title)
    _save(fig, path)
