"""Figures a person reads: reconstruction grids, latent plots, loss curves, schedules.

Every function takes plain numpy arrays (or a decode function) and a path, and
writes one PNG atomically. One convention throughout: 150 dpi, greyscale images dark on
light (`gray_r`), as printed digits are; colour images (C = 3) as they are. Images are
(n, H, W, C) in [0, 1] with C = 1 or 3, any H×W.
"""

import io
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, Optional

import matplotlib

from vae_kl.process.notebook import in_notebook

if not in_notebook():  # A notebook keeps its inline backend (every figure here is closed once saved).
    matplotlib.use("Agg")  # No display on servers and CI, and no window per figure on a desktop.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402

from vae_kl.process.atomic import atomic_save  # noqa: E402

DPI = 150
TITLE_PAD = 16  # Points between an axis and its title: room for the power of ten of its ticks.
TINY_CODE = 0.05  # Posterior means all within this of the origin (the prior's σ is 1): a collapsed code's speck.
PRIOR_VIEW = 3.0  # A collapsed code is drawn on ±3 prior σ, where it is the one dot it is.
DIGIT_CMAP = "gray_r"  # Dark ink on light paper, for every figure that shows digits.
STATE_COLOURS = {"active": "C0", "healthy": "C0", "informative": "C0", "used": "C0",
                 "partial": "#e69f00", "weak": "#e69f00",
                 "unused": "lightgray", "inactive": "lightgray", "collapsed": "lightgray"}


def _save(fig, path):
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png"))
    plt.close(fig)


def _wrap(text, width_inches, fontsize):
    """Wrap each line of a title to the figure's width (a character is about 0.55 em wide)."""
    chars = max(20, int(width_inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in str(text).split("\n"))


def _suptitle(fig, title, fontsize=10):
    if title:
        fig.suptitle(_wrap(title, fig.get_figwidth(), fontsize), fontsize=fontsize)


GRID_COLUMNS = 10  # Columns a reconstruction grid aims at: one per MNIST class.
MAX_GRID_CLASSES = 20  # More labels than this (a folder of many): the grid shows the first ones.


def pick_one_per_class(labels: np.ndarray, per_class: Optional[int] = None) -> np.ndarray:
    """Indices of the first `per_class` examples of every label, ordered by label. By default one per
    label, or more when there are fewer than GRID_COLUMNS labels (a folder with one or three labels
    still fills a row of about ten); at most MAX_GRID_CLASSES labels."""
    classes = np.unique(labels)[:MAX_GRID_CLASSES]
    per_class = per_class or max(1, GRID_COLUMNS // len(classes))
    chosen = []
    for label in classes:
        chosen.extend(np.flatnonzero(labels == label)[:per_class].tolist())
    return np.array(chosen)


def _show(ax, image, **kwargs):
    """imshow of one (H, W, C) image in [0, 1]: greyscale (C = 1) dark on light, colour as it is."""
    image = np.clip(np.asarray(image), 0, 1)
    if image.shape[-1] == 1:
        return ax.imshow(image[..., 0], cmap=DIGIT_CMAP, vmin=0, vmax=1, **kwargs)
    return ax.imshow(image, **kwargs)


def _tile(images, rows, cols):
    """(rows·cols, H, W, C) images as one (rows·H, cols·W, C) image, row by row."""
    _, height, width, channels = images.shape
    grid = images[:rows * cols].reshape(rows, cols, height, width, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * height, cols * width, channels)


IMAGE_GAP = 0.12  # Space between the images of image_rows, as a fraction of an image's size.


def image_rows(rows: Sequence[np.ndarray], row_titles: Sequence[str], col_titles: Optional[npt.ArrayLike], path: str,
               title: Optional[str] = None) -> None:
    """A grid of images: one row per entry of `rows` (each (n, H, W, C), C = 1 or 3), labelled.

    A long `title` (e.g. with β, −ELBO and the verdict) is wrapped to the figure's width. Drawn as one
    image on one axes (gaps transparent, frames as one collection): this runs after every epoch, and a
    grid of 20 axes took 0.3 s to save.
    """
    n_rows, n_cols = len(rows), len(rows[0])
    height, width, channels = np.asarray(rows[0][0]).shape
    gap_y, gap_x = max(1, round(IMAGE_GAP * height)), max(1, round(IMAGE_GAP * width))
    canvas = np.zeros((n_rows * (height + gap_y) - gap_y, n_cols * (width + gap_x) - gap_x, 4))  # RGBA
    cmap = plt.get_cmap(DIGIT_CMAP)
    frames = []
    for r, images in enumerate(rows):
        for c in range(n_cols):
            image = np.clip(np.asarray(images[c], dtype="float64"), 0, 1)
            top, left = r * (height + gap_y), c * (width + gap_x)
            canvas[top:top + height, left:left + width] = (cmap(image[..., 0]) if channels == 1 else
                                                          np.concatenate([image, np.ones((height, width, 1))], -1))
            frames.append(Rectangle((left - 0.5, top - 0.5), width, height))
    fig = plt.figure(figsize=(1.0 * n_cols + 1.6, 1.05 * n_rows + 0.5))
    ax = fig.add_axes((0.12, 0.02, 0.86, 0.8 if title else 0.9))
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="black", linewidth=0.8))
    ax.set_axis_off()
    for c in range(n_cols if col_titles is not None else 0):
        ax.text(c * (width + gap_x) + width / 2, -gap_y, str(col_titles[c]), ha="center", va="bottom", fontsize=9)
    for r, row_title in enumerate(row_titles):
        ax.text(-gap_x, r * (height + gap_y) + height / 2, row_title, ha="right", va="center", fontsize=9)
    if title:
        ax.set_title(_wrap(title, fig.get_figwidth(), 10), fontsize=10, pad=22)
    _save(fig, path)


def reconstructions(originals: np.ndarray, recons: np.ndarray, labels: Optional[npt.ArrayLike], path: str,
                    title: Optional[str] = None) -> None:
    """Originals on top, their reconstructions beneath, each column labelled with its class."""
    image_rows([originals, recons], ["input", "reconstruction"], labels, path, title)


def latent_manifold(decode: Callable[[np.ndarray], npt.ArrayLike], path: str, n: int = 20, scale: float = 1.0,
                    extent: Optional[tuple[float, float, float, float]] = None, title: Optional[str] = None) -> None:
    """The tutorial's plot: digits decoded on an n×n grid of z (2-D latents).

    The grid spans `extent` = (xmin, xmax, ymin, ymax), e.g. from quantiles of the posterior
    means; without it [-scale, scale]², the tutorial's choice.
    """
    xmin, xmax, ymin, ymax = extent if extent is not None else (-scale, scale, -scale, scale)
    xs = np.linspace(xmin, xmax, n, dtype="float32")
    ys = np.linspace(ymin, ymax, n, dtype="float32")
    z = np.array([[xi, yi] for yi in ys[::-1] for xi in xs], dtype="float32")  # (n*n, 2), top row = max y
    figure = _tile(np.asarray(decode(z)), n, n)  # (n·H, n·W, C)
    fig, ax = plt.subplots(figsize=(8, 8))
    _show(ax, figure, extent=(xmin, xmax, ymin, ymax), aspect="auto")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(_wrap(title or "Digits decoded across the latent space", 8, 12))
    _save(fig, path)


def _plain_ticks(ax, bins=6):
    """At most `bins` ticks a side, written short: a tiny range (a collapsed code's 1e-3) as 2 ×10⁻³ labels with
    the power beside the axis, not as 0.0020000 labels that run into each other."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=bins))
        formatter = ScalarFormatter(useMathText=True)
        formatter.set_powerlimits((-2, 4))
        axis.set_major_formatter(formatter)


def latent_clusters(z_mean: np.ndarray, labels: np.ndarray, path: str, dims: tuple[int, int] = (0, 1)) -> None:
    """Posterior means of validation digits, coloured by class, on two latent dimensions; a collapsed code (every
    mean near the origin) says how near in the title, since autoscaling makes its speck look like a spread."""
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
    _plain_ticks(ax)
    cmap = "tab10" if len(np.unique(labels)) <= 10 else "tab20"  # Distinct colours for up to 20 folder labels.
    if z_mean.shape[1] == 1:
        points = ax.scatter(z_mean[:, 0], np.zeros(len(z_mean)), c=labels, cmap=cmap, s=4)
    else:
        points = ax.scatter(z_mean[:, dims[0]], z_mean[:, dims[1]], c=labels, cmap=cmap, s=4)
        ax.set_ylabel(f"z_mean[{dims[1]}]")
    fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(f"z_mean[{dims[0]}]")
    reach = float(np.max(np.abs(z_mean))) if len(z_mean) else 0.0
    near = ""
    if reach < TINY_CODE:  # Autoscaled, a speck of 1e-4 fills the axes as if it were a spread: draw the prior's scale.
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, linestyle="--", color="0.6"))
        ax.set_xlim(-PRIOR_VIEW, PRIOR_VIEW)
        ax.set_ylim(-PRIOR_VIEW, PRIOR_VIEW)
        ax.set_aspect("equal")
        near = (f"\nevery mean within {reach:.2g} of the origin:\n{len(z_mean):,} digits, one dot on the prior's "
                f"scale (dashed: its 1σ)")
    ax.set_title(f"Validation digits in the latent space (posterior means){near}")
    _save(fig, path)


def _robust_ylim(ax, epochs, series, skip):
    """Y-limits from the epochs after the first `skip` when the early ones would more than double the
    range (a large first epoch flattening the rest); those are then marked by a triangle at the edge.

    Returns a note of the values off the scale ("" when none are).
    """
    everything, tail = np.concatenate(series), np.concatenate([values[skip:] for values in series])
    lo, hi = float(np.min(tail)), float(np.max(tail))
    if np.ptp(everything) <= 2 * (hi - lo):
        return ""
    pad = 0.1 * (hi - lo) or 0.05 * abs(hi) or 1.0
    lo, hi = lo - pad, hi + pad
    ax.set_ylim(lo, hi)
    notes = []
    for i, epoch in enumerate(epochs[:skip]):
        values = [values[i] for values in series]
        for value, colour in zip(values, ("C0", "C1")):
            if value > hi or value < lo:
                ax.plot(epoch, hi if value > hi else lo, marker="^" if value > hi else "v", color=colour,
                        clip_on=False, zorder=4)
        if any(v > hi or v < lo for v in values):
            notes.append(f"epoch {epoch} " + " / ".join(f"{v:.4g}" for v in values))
    return f"off scale (train / validation): {', '.join(notes)}" if notes else ""


def loss_curves(history: list[dict], path: str, title: Optional[str] = None, skip_epochs: Optional[int] = None) -> None:
    """Training and validation curves per epoch: the objective, reconstruction, KL and -ELBO.

    The y-range comes from the epochs after the first `skip_epochs` (default: 1 epoch when there
    are at least 4, 2 from 10), values outside it are marked at the edge. When the training
    objective is the −ELBO (β = 1, no schedule, no free bits) its panel would repeat the −ELBO's,
    so it is dropped and the −ELBO panel says so.
    """
    epochs = np.array([row["epoch"] for row in history])
    same = all(np.isclose(row["loss"], row["neg_elbo"], rtol=1e-5) and
               np.isclose(row["val_loss"], row["val_neg_elbo"], rtol=1e-5) for row in history)
    panels = [("reconstruction", "reconstruction (nats/digit)"), ("kl", "KL (nats/digit)"),
              ("neg_elbo", "−ELBO = training objective (β = 1)" if same else "−ELBO (nats/digit)")]
    if not same:
        panels.insert(0, ("loss", "training objective"))
    if skip_epochs is None:
        skip_epochs = 0 if len(epochs) < 4 else 1 if len(epochs) < 10 else 2
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False, layout="constrained")
    for ax, (key, label) in zip(axes[0], panels):
        series = [np.array([row[key] for row in history], float),
                  np.array([row[f"val_{key}"] for row in history], float)]
        ax.plot(epochs, series[0], marker="o", markersize=3, label="train")
        ax.plot(epochs, series[1], marker="o", markersize=3, label="validation")
        note = _robust_ylim(ax, epochs, series, skip_epochs) if skip_epochs else ""
        ax.yaxis.set_major_formatter(ScalarFormatter(useMathText=True))
        ax.set_title(label, fontsize=10, pad=TITLE_PAD)  # Above a ×10⁻⁵ the axis may put at its top left.
        if note:  # Under the axis label, where it cannot cover a curve.
            ax.text(0.5, -0.2, _wrap(note, 3.6, 7), transform=ax.transAxes, ha="center", va="top", fontsize=7)
        ax.set_xlabel("epoch")
        if len(epochs) <= 12:  # A locator would put fractional epochs around a single one.
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    _suptitle(fig, title, 11)
    _save(fig, path)


def information_curves(history: list[dict], path: str, collapsed_below: float, informative_from: float,
                       title: Optional[str] = None) -> bool:
    """The information the code carries per epoch (metrics.csv's val_information, on the first validation
    digits), in total and per latent unit, with the verdict's two thresholds as dashed lines. Epochs of a
    run resumed from an earlier version, which did not log it, are left out. Returns False (and draws
    nothing) when no epoch has the numbers."""
    rows = [row for row in history if "val_information" in row]
    if not rows:
        return False
    epochs = np.array([row["epoch"] for row in rows])
    units = sorted(int(key.rsplit("_", 1)[1]) for key in rows[-1] if key.startswith("val_information_unit_"))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), squeeze=False)
    total, per_unit = axes[0]
    total.plot(epochs, [row["val_information"] for row in rows], marker="o", markersize=3, color="C0")
    total.axhline(collapsed_below, color="gray", linestyle="--", linewidth=1)
    total.set_title(f"I(x; z), nats (collapsed below {collapsed_below:g})", fontsize=10)
    shown = units[:10]  # More lines than this are unreadable; the first ten units stand for the rest.
    for j in shown:
        per_unit.plot(epochs, [row.get(f"val_information_unit_{j}", np.nan) for row in rows], marker="o",
                      markersize=3, label=f"unit {j}")
    per_unit.axhline(informative_from, color="gray", linestyle="--", linewidth=1)
    per_unit.set_title(f"I(x; z_j) per unit (informative from {informative_from:g})"
                       + (f", units 0-9 of {len(units)}" if len(units) > len(shown) else ""), fontsize=10)
    if shown:
        per_unit.legend(fontsize=8)
    for ax in (total, per_unit):
        ax.set_xlabel("epoch")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _suptitle(fig, title, 11)
    _save(fig, path)
    return True


def kl_schedule(steps: npt.ArrayLike, weights: npt.ArrayLike, epoch_steps: npt.ArrayLike, epoch_weights: npt.ArrayLike,
                path: str, schedule: Optional[str] = None, title: Optional[str] = None,
                ylabel: str = "KL weight λ") -> None:
    """The KL weight in force at every step (or what the schedule moves: ylabel), with the value logged
    at the end of each epoch.

    A constant weight gets a strip with a plain statement ("KL weight λ: constant, 1 at every one of ...") instead of a
    figure of a flat line; `schedule` names the schedule in the title.
    """
    weights = np.asarray(weights, float)
    if len(weights) and np.ptp(weights) <= 1e-12 * max(1.0, abs(weights[0])):
        fig = plt.figure(figsize=(7, 0.9))
        total = f" of the {int(steps[-1]):,}" if len(steps) and steps[-1] > 0 else ""
        fig.text(0.5, 0.5, _wrap(title or f"{ylabel}: constant, {weights[0]:.4g} at every one{total} training "
                                 f"steps (no schedule)", 7, 12), ha="center", va="center", fontsize=12)
        _save(fig, path)
        return
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    ax.plot(steps, weights, label="weight in force")
    ax.scatter(epoch_steps, epoch_weights, color="C3", zorder=3, label="logged per epoch")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    named = f": {schedule}" if schedule else ""
    default = f"KL weight schedule{named}, from {weights.min():.4g} to {weights.max():.4g}"
    ax.set_title(_wrap(title or default, 7, 11), fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def kl_per_dimension(kl_per_dim: npt.ArrayLike, active: npt.ArrayLike, path: str,
                     information: Optional[npt.ArrayLike] = None, states: Optional[Sequence[str]] = None,
                     title: Optional[str] = None, information_label: str = "information (nats)") -> None:
    """Bar chart of the average KL of each latent dimension; active units in colour.

    Every bar is labelled with its value and drawn at least a sliver high, so an unused unit
    (KL about 0) is still visible. `information` (one value per unit, nats) is drawn beside
    the KL; `states` (one string per unit, e.g. "active", "partial", "unused") colours the bars
    and labels the ticks, instead of `active`.
    """
    kl = np.asarray(kl_per_dim, float)
    units = np.arange(len(kl))
    if states is None:
        states = ["active" if a else "unused" for a in active]
    series = [kl] + ([] if information is None else [np.asarray(information, float)])
    # At least 0.1 nats (the collapse threshold) tall, so a collapsed run's KLs look like the zeros they nearly are.
    top = max(float(np.max(np.concatenate(series))) if len(kl) else 0.0, 0.1)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(4.5, (0.5 + 0.3 * len(series)) * len(kl) + 2), 3.8))
    for i, values in enumerate(series):
        x = units + (i - (len(series) - 1) / 2) * width
        faces = [STATE_COLOURS.get(str(s).lower(), "C1") for s in states] if i == 0 else ["C2"] * len(values)
        shown = np.maximum(values, 0.015 * top)  # A sliver for a zero, so the bar does not vanish.
        ax.bar(x, shown, width=width * 0.95, color=faces, edgecolor="0.3", linewidth=0.6,
               hatch=None if i == 0 else "..")
        for xi, value in zip(x, values):
            text = f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.1g}"
            ax.annotate(text, (xi, max(value, 0.015 * top)), textcoords="offset points", xytext=(0, 2), ha="center",
                        fontsize=7)
    ax.set_ylim(0, top * 1.15)
    ax.set_xticks(units)
    ax.set_xticklabels([f"{j}\n{s}" for j, s in zip(units, states)], fontsize=8)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("nats/digit")
    # The KL bars' colours are the units' states, so the legend names those, not one "KL" colour.
    handles = [Patch(facecolor=STATE_COLOURS.get(str(s).lower(), "C1"), edgecolor="0.3", label=f"KL, {s} unit")
               for s in dict.fromkeys(states)]
    if information is not None:
        handles.append(Patch(facecolor="C2", edgecolor="0.3", hatch="..", label=information_label))
    ax.legend(handles=handles, fontsize=8)
    default = "KL per latent dimension" + ("" if information is None else f" and {information_label}")
    ax.set_title(_wrap(title or default, fig.get_figwidth(), 11), fontsize=11)
    _save(fig, path)


def _display_xy(ax, xs, ys):
    ax.autoscale_view()
    return ax.transData.transform(np.column_stack([xs, ys]))


def _group_close(ax, xs, ys, radius):
    """Groups of point indices whose markers lie within `radius` display pixels of a group's first point."""
    xy, groups = _display_xy(ax, xs, ys), []
    for i, point in enumerate(xy):
        for group in groups:
            if np.hypot(*(point - xy[group[0]])) < radius:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _annotate(ax, x, y, text, colour="black"):
    """A label beside its point, on the side facing the middle of the axes so it is not cut off."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    right, top = x > (x0 + x1) / 2, y > (y0 + y1) / 2
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(-6 if right else 6, -4 if top else 4), fontsize=7,
                ha="right" if right else "left", va="top" if top else "bottom", color=colour,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})


def _group_label(labels, max_lines=6):
    if len(labels) == 1:
        return str(labels[0])
    shown = [str(label) for label in labels[:max_lines]]
    more = [f"... and {len(labels) - max_lines} more"] if len(labels) > max_lines else []
    return "\n".join([f"{len(labels)} at the same point:"] + shown + more)


def rate_distortion(points: Sequence[tuple[Any, float, float]], path: str, title: str = "Rate-distortion",
                    collapsed: Optional[Sequence[bool]] = None, xerr: Optional[npt.ArrayLike] = None,
                    yerr: Optional[npt.ArrayLike] = None, seeds: Optional[Sequence[tuple]] = None) -> None:
    """Points (rate = KL, distortion = reconstruction), each labelled.

    Args:
        points: list of (label, kl, reconstruction).
        collapsed: optional list of booleans. Without it the points are one run's path (in order,
            marked "start" and "end", labels thinned so none overlap); with it they are separate
            runs or settings, collapsed ones a red cross, explained in a legend, and points at
            the same spot share one label.
        xerr, yerr: optional error bars (e.g. standard errors over seeds), one per point.
        seeds: optional list of (kl, reconstruction, collapsed) of individual runs, drawn faintly
            behind the points (e.g. the seeds whose means the points are).
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    kls = np.array([p[1] for p in points], float)
    recs = np.array([p[2] for p in points], float)
    labels = [p[0] for p in points]
    if seeds:
        s = np.array([seed[:2] for seed in seeds], float)
        bad = np.array([len(seed) > 2 and bool(seed[2]) for seed in seeds])
        kinds = ((~bad, "o", "C0", "single seed"), (bad, "x", "C3", "single seed, collapsed"))
        for mask, marker, colour, label in kinds:
            if mask.any():
                ax.scatter(s[mask, 0], s[mask, 1], color=colour, marker=marker, alpha=0.3, s=18, label=label)
    if xerr is not None or yerr is not None:
        ax.errorbar(kls, recs, xerr=xerr, yerr=yerr, fmt="none", ecolor="0.4", elinewidth=1, capsize=3, zorder=2,
                    label="± standard error")
    ax.margins(0.12)
    if collapsed is None:
        ax.plot(kls, recs, marker="o", markersize=3 if len(points) > 30 else 5, color="C0", zorder=3)
        ax.scatter(kls[:1], recs[:1], s=80, color="C2", zorder=4, label=f"start ({labels[0]})")
        ax.scatter(kls[-1:], recs[-1:], s=80, color="C3", marker="s", zorder=4, label=f"end ({labels[-1]})")
        # Greedy thinning in display space: start and end always, then any point clear of the labelled ones.
        xy, last, placed = _display_xy(ax, kls, recs), len(points) - 1, []
        for i in dict.fromkeys([0, last, *range(1, last)]):
            if i in (0, last) or all(np.hypot(*(xy[i] - xy[j])) > 28 for j in placed):
                placed.append(i)
                word = "start/end: " if last == 0 else "start: " if i == 0 else "end: " if i == last else ""
                _annotate(ax, kls[i], recs[i], f"{word}{labels[i]}")
        ax.legend(fontsize=8, title="epochs in order", title_fontsize=8)
    else:
        bad = np.array([bool(b) for b in collapsed])
        if (~bad).any():
            ax.scatter(kls[~bad], recs[~bad], marker="o", color="C0", s=50, zorder=3, label="kept a code")
        if bad.any():
            ax.scatter(kls[bad], recs[bad], marker="x", color="C3", s=70, linewidths=2, zorder=3, label="collapsed")
        for group in _group_close(ax, kls, recs, radius=12):
            _annotate(ax, kls[group[0]], recs[group[0]], _group_label([labels[i] for i in group]),
                      "C3" if bad[group].all() else "black")
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("rate: KL (nats/digit)")
    ax.set_ylabel("distortion: reconstruction NLL (nats/digit)")
    ax.set_title(_wrap(title, 7.5, 11), fontsize=11)
    _save(fig, path)


PLACED_MARKERS = ("s", "D", "^", "v", "P", "X", "*", "h", "<", ">")  # One per run placed beside a frontier.
SLOPE_PIXELS = 46  # Length on screen of the slope −β drawn at each point of a frontier.


def frontier(points: Sequence[tuple[float, float, Optional[float], float, Optional[float]]], path: str, title: str,
             seeds: Optional[Sequence[tuple[float, float]]] = None,
             placed: Sequence[tuple[str, float, float]] = ()) -> dict:
    """The rate–distortion frontier of a β sweep: rate (KL) across, distortion (reconstruction) up.

    Args:
        points: list of (β, rate, rate_se, distortion, distortion_se), one per β, in β order; a None
            standard error draws no bar. They are joined in that order, each labelled with its β and
            crossed by a short segment of slope −β (the β-VAE optimum has dD/dR = −β).
        seeds: optional list of (rate, distortion) of single runs, drawn faintly behind the points.
        placed: list of (label, rate, distortion) of other runs, each its own marker, named in the legend.
    Returns what the axes hold, read back from the artists after drawing: {"beta", "rate", "distortion",
    "rate_se", "distortion_se", "slopes", "seeds", "placed"} (placed: [(label, rate, distortion)]).
    """
    betas = [float(p[0]) for p in points]
    rate, distortion = np.array([p[1] for p in points], float), np.array([p[3] for p in points], float)
    errors = [np.array([0.0 if p[i] is None else p[i] for p in points], float) for i in (2, 4)]
    fig, ax = plt.subplots(figsize=(7.5, 5.4))
    faint = None
    if seeds:
        faint = ax.scatter(*np.array(seeds, float).T, color="C0", alpha=0.3, s=18, label="single seed")
    bars = ax.errorbar(rate, distortion, xerr=errors[0], yerr=errors[1], fmt="none", ecolor="0.4", elinewidth=1,
                       capsize=3, zorder=2, label="± standard error") if any(e.any() for e in errors) else None
    line, = ax.plot(rate, distortion, marker="o", color="C0", zorder=3,
                    label="fixed β, mean over seeds" if seeds else "fixed β")
    marks = [ax.scatter([x], [y], marker=PLACED_MARKERS[i % len(PLACED_MARKERS)], color=f"C{1 + i % 9}", s=70,
                        zorder=4, edgecolors="black", linewidths=0.6, label=label)
             for i, (label, x, y) in enumerate(placed)]
    ax.margins(0.15)
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())  # Fixed now, so a segment's length on screen is known.
    ax.set_ylim(ax.get_ylim())
    segments = _slope_segments(ax, betas, rate, distortion)
    for beta, x, y in zip(betas, rate, distortion):
        _annotate(ax, x, y, f"β={beta:g}")
    ax.set_xlabel("rate: KL (nats/digit)")
    ax.set_ylabel("distortion: reconstruction NLL (nats/digit)")
    ax.set_title(_wrap(title, 7.5, 11), fontsize=11)
    ax.legend(fontsize=7, loc="best")
    drawn = {"beta": betas, "rate": line.get_xdata().tolist(), "distortion": line.get_ydata().tolist(),
             "rate_se": _bar_halves(bars, 0, len(points)), "distortion_se": _bar_halves(bars, 1, len(points)),
             "slopes": [float(np.diff(s.get_ydata())[0] / np.diff(s.get_xdata())[0]) for s in segments],
             "seeds": [] if faint is None else faint.get_offsets().tolist(),
             "placed": [(mark.get_label(), *map(float, mark.get_offsets()[0])) for mark in marks]}
    _save(fig, path)
    return drawn


def _slope_segments(ax, betas, xs, ys):
    """At each point a segment of slope −β (in data units), SLOPE_PIXELS long on screen; the limits must be fixed."""
    (x0, y0), (x1, y1) = ax.transData.transform([(0.0, 0.0), (1.0, 1.0)])
    per_x, per_y = abs(x1 - x0), abs(y1 - y0)  # Pixels per data unit along each axis.
    segments = []
    for i, (beta, x, y) in enumerate(zip(betas, xs, ys)):
        half = SLOPE_PIXELS / 2 / np.hypot(per_x, beta * per_y)  # Half the segment's extent in rate.
        segments += ax.plot([x - half, x + half], [y + beta * half, y - beta * half], color="C3", linewidth=1.6,
                            zorder=3.5, label="slope −β (the optimum's dD/dR)" if i == 0 else None)
    return segments


def _bar_halves(bars, axis, n):
    """The half-widths of an errorbar's bars along axis 0 (x) or 1 (y), read back from its line segments."""
    if bars is None:
        return [0.0] * n
    collection = bars.lines[2][axis]
    return [float(abs(np.diff(np.asarray(seg)[:, axis])[0]) / 2) for seg in collection.get_segments()]


def samples(images: np.ndarray, path: str, title: str = "Samples from the prior") -> None:
    """A square grid of images (n, H, W, C)."""
    side = int(np.sqrt(len(images)))
    fig, ax = plt.subplots(figsize=(6, 6))
    _show(ax, _tile(np.asarray(images), side, side))
    ax.set_axis_off()
    ax.set_title(_wrap(title, 6, 12))
    _save(fig, path)


def thumbnail_png(path: str, width: int = 240) -> bytes:
    """A PNG file shrunk to about `width` pixels wide by averaging blocks of pixels; returns PNG bytes."""
    image = plt.imread(path)
    step = max(1, int(np.ceil(image.shape[1] / width)))
    h, w = image.shape[0] // step * step, image.shape[1] // step * step
    small = image[:h, :w].reshape(h // step, step, w // step, step, -1).mean(axis=(1, 3))
    buffer = io.BytesIO()
    plt.imsave(buffer, np.clip(small, 0, 1), format="png")
    return buffer.getvalue()
