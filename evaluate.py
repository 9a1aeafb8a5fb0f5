"""Evaluate a VAE on its validation digits: the true ELBO, the IWAE bound, and a collapse verdict.

    python evaluate.py --run outputs/<run>

Whatever the training objective was, the numbers here are for β = 1: the
negative ELBO = E_q[-log p(x|z)] + KL(q(z|x) || p(z)), in nats per digit, and
the importance-weighted bound of Burda et al. (2016), which is tighter. train.py
calls `evaluate_run` at the end of training; this script re-runs it from the
saved model.keras and writes the same numbers into summary.json.
"""

import argparse
import math
import os
import sys

import keras
import numpy as np

import losses
import plots

ACTIVE_UNIT_THRESHOLD = 0.01  # Var_x E[z_j|x] above this makes unit j active (Burda et al. 2016).
COLLAPSE_KL_NATS = 0.1  # Less total KL than this carries no usable information about the digit.
DECODE_BATCH = 1024  # Latent codes decoded per call; bounds memory whatever k is.
EVAL_SEED = 20240611


def _decode_logits(vae, z):
    return vae.decode_logits(z).numpy()


def _nll_per_digit(vae, x, logits, log_sigma):
    """Σ over pixels of -log p(x|z) for matching rows of x and logits; returns (n,)."""
    return losses.sum_over_pixels(losses.reconstruction_nll(x, logits, vae.likelihood, log_sigma)).numpy()


def evaluation_log_sigma(vae, x, z_mean):
    """log σ of a gaussian decoder for evaluation: learned, fixed, or optimal over the validation set."""
    if vae.likelihood != "gaussian":
        return None
    logits = _decode_logits(vae, z_mean[:DECODE_BATCH])
    return float(vae.pixel_log_sigma(x[:DECODE_BATCH], logits))


def importance_bounds(vae, x, z_mean, z_log_var, k, log_sigma, seed=EVAL_SEED):
    """Per-digit ELBO terms and the IWAE bound with k samples, computed in chunks.

    Returns (reconstruction (n,), iwae_log_likelihood (n,)), where reconstruction
    is the Monte Carlo mean over the k samples of -log p(x|z), and the IWAE bound
    is log (1/k) Σ_i p(x, z_i)/q(z_i|x) (Burda et al. 2016, eq. 8).
    """
    rng = np.random.default_rng(seed)
    n, latent_dim = z_mean.shape
    per_chunk = max(1, DECODE_BATCH // k)
    reconstruction, iwae = np.zeros(n), np.zeros(n)
    for start in range(0, n, per_chunk):
        xs, mu, log_var = x[start:start + per_chunk], z_mean[start:start + per_chunk], z_log_var[start:start + per_chunk]
        b = len(xs)
        eps = rng.standard_normal((k, b, latent_dim)).astype("float32")
        z = mu[None] + np.exp(0.5 * log_var)[None] * eps  # (k, b, latent_dim)
        logits = _decode_logits(vae, z.reshape(k * b, latent_dim))
        x_rep = np.broadcast_to(xs[None], (k,) + xs.shape).reshape((k * b,) + xs.shape[1:])
        log_px_z = -_nll_per_digit(vae, x_rep, logits, log_sigma).reshape(k, b)
        log_pz = -0.5 * np.sum(z ** 2 + math.log(2 * math.pi), axis=-1)
        log_qz = -0.5 * np.sum(eps ** 2 + log_var[None] + math.log(2 * math.pi), axis=-1)
        log_w = (log_px_z + log_pz - log_qz).astype("float64")  # (k, b)
        top = log_w.max(axis=0)
        iwae[start:start + b] = top + np.log(np.mean(np.exp(log_w - top), axis=0))
        reconstruction[start:start + b] = -log_px_z.mean(axis=0)
    return reconstruction, iwae


def gaussian_kl_np(z_mean, z_log_var):
    """Closed-form KL per dimension, (n, latent_dim), in float64."""
    z_log_var = z_log_var.astype("float64")
    return 0.5 * (np.expm1(z_log_var) - z_log_var + z_mean.astype("float64") ** 2)


def mutual_information(z_mean, z_log_var, seed=EVAL_SEED, chunk=256):
    """I(x; z) under q: E_x E_{z~q(z|x)} [log q(z|x) - log q(z)], with q(z) the aggregate posterior
    estimated as the average of q(z|x_m) over the evaluated digits (Hoffman & Johnson 2016)."""
    rng = np.random.default_rng(seed + 1)
    n = len(z_mean)
    var = np.exp(z_log_var).astype("float64")
    z = z_mean + np.sqrt(var) * rng.standard_normal(z_mean.shape)  # (n, latent_dim)
    log_norm = -0.5 * np.sum(np.log(2 * math.pi * var), axis=1)  # (n,)
    total = 0.0
    for start in range(0, n, chunk):
        zs = z[start:start + chunk, None, :]  # (c, 1, latent_dim)
        log_q = log_norm[None] - 0.5 * np.sum((zs - z_mean[None]) ** 2 / var[None], axis=2)  # (c, n)
        top = log_q.max(axis=1, keepdims=True)
        log_aggregate = top[:, 0] + np.log(np.mean(np.exp(log_q - top), axis=1))
        own = log_q[np.arange(len(zs)), np.arange(start, start + len(zs))]
        total += np.sum(own - log_aggregate)
    return total / n


def reconstruction_spread(x, recons):
    """How much reconstructions differ from each other, relative to how much the inputs do.

    The ratio of total per-pixel variance across digits: about 1 for a good model,
    0 when every reconstruction is the same image.
    """
    spread_in = np.var(x.reshape(len(x), -1), axis=0).sum()
    spread_out = np.var(recons.reshape(len(recons), -1), axis=0).sum()
    return float(spread_out / max(spread_in, 1e-12))


def collapse_verdict(kl_nats, active, latent_dim, spread):
    """A plain-words verdict. Collapse: no active unit, or too little KL to carry information."""
    numbers = (f"KL {kl_nats:.4f} nats, {active}/{latent_dim} active units, reconstructions vary "
               f"{spread:.1%} as much as the inputs")
    if active == 0 or kl_nats < COLLAPSE_KL_NATS:
        consequence = ("every reconstruction is nearly the same image" if spread < 0.1
                       else "the decoder ignores the latent code")
        return {"detected": True, "reason": f"posterior collapse: {numbers}: {consequence}."}
    if active < latent_dim:
        return {"detected": False, "reason": f"no collapse, but {latent_dim - active} of {latent_dim} latent "
                                             f"units are unused: {numbers}."}
    return {"detected": False, "reason": f"no collapse: {numbers}."}


def compute_metrics(vae, x, k, seed=EVAL_SEED):
    """Every validation number summary.json reports, plus arrays the figures need."""
    z_mean, z_log_var, _ = [a.numpy() for a in _encode(vae, x)]
    log_sigma = evaluation_log_sigma(vae, x, z_mean)
    reconstruction, iwae = importance_bounds(vae, x, z_mean, z_log_var, k, log_sigma, seed)
    kl_per_dim = gaussian_kl_np(z_mean, z_log_var).mean(axis=0)
    kl = float(kl_per_dim.sum())
    variance = z_mean.astype("float64").var(axis=0)
    active = variance > ACTIVE_UNIT_THRESHOLD
    recons = vae.decode(z_mean[:DECODE_BATCH]).numpy()
    spread = reconstruction_spread(x[:DECODE_BATCH], recons)
    neg_elbo = float(reconstruction.mean()) + kl
    pixels = int(np.prod(x.shape[1:]))
    validation = {
        "examples": int(len(x)), "neg_elbo_nats": neg_elbo,
        "neg_elbo_bits_per_dim": neg_elbo / (pixels * math.log(2)),
        "reconstruction_nats": float(reconstruction.mean()), "kl_nats": kl,
        "kl_per_dim_nats": kl_per_dim.tolist(), "active_units": int(active.sum()),
        "latent_dim": int(z_mean.shape[1]), "posterior_mean_variance": variance.tolist(),
        "iwae_nll_nats": float(-iwae.mean()), "iwae_nll_bits_per_dim": float(-iwae.mean()) / (pixels * math.log(2)),
        "iwae_k": int(k), "mutual_information_nats": float(mutual_information(z_mean, z_log_var, seed)),
        "reconstruction_spread": spread,
    }
    if log_sigma is not None:
        validation["gaussian_sigma"] = math.exp(log_sigma)
    verdict = collapse_verdict(kl, validation["active_units"], validation["latent_dim"], spread)
    arrays = {"z_mean": z_mean, "active": active, "kl_per_dim": kl_per_dim}
    return validation, verdict, arrays


def _encode(vae, x):
    """Encoder outputs for many digits, in batches: [z_mean, z_log_var, z] as tensors."""
    parts = [vae.encoder(x[i:i + DECODE_BATCH], training=False) for i in range(0, len(x), DECODE_BATCH)]
    return [keras.ops.concatenate([p[j] for p in parts], axis=0) for j in range(3)]


def write_figures(vae, run_dir, x, labels, arrays, history):
    """The figures of a finished run (training-time figures are drawn by train.py)."""
    decode = lambda z: vae.decode(z).numpy()  # noqa: E731
    index = plots.pick_one_per_class(labels)
    plots.reconstructions(x[index], vae.predict(x[index], verbose=0), labels[index],
                          os.path.join(run_dir, "reconstructions.png"), "Validation digits and reconstructions")
    active, z_mean = arrays["active"], arrays["z_mean"]
    dims = tuple(np.argsort(-z_mean.var(axis=0))[:2]) if z_mean.shape[1] > 2 else (0, 1)
    plots.latent_clusters(z_mean, labels, os.path.join(run_dir, "latent_clusters.png"), dims)
    if vae.latent_dim == 2:
        plots.latent_manifold(decode, os.path.join(run_dir, "latent_space.png"))
    plots.kl_per_dimension(arrays["kl_per_dim"], active, os.path.join(run_dir, "kl_per_dim.png"))
    prior = np.random.default_rng(EVAL_SEED).standard_normal((100, vae.latent_dim)).astype("float32")
    plots.samples(decode(prior), os.path.join(run_dir, "samples.png"))
    if history:
        points = [(row["epoch"], row["val_kl"], row["val_reconstruction"]) for row in history]
        plots.rate_distortion(points, os.path.join(run_dir, "rate_distortion.png"),
                              "Rate-distortion path per epoch (validation)")


def evaluate_run(vae, run_dir, x_val, y_val, k, max_examples, history):
    """Compute the validation numbers and figures for a run; returns (validation, verdict)."""
    if max_examples is not None:
        x_val, y_val = x_val[:max_examples], y_val[:max_examples]
    validation, verdict, arrays = compute_metrics(vae, x_val, k)
    write_figures(vae, run_dir, x_val, y_val, arrays, history)
    return validation, verdict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="A run folder written by train.py.")
    parser.add_argument("--iwae-k", type=int, default=None, help="Importance samples (default: the run's).")
    args = parser.parse_args(argv)
    import train  # Shares the loading and reporting code of the trainer.

    return train.exit_on_user_error(lambda: train.reevaluate(args.run, args.iwae_k))


if __name__ == "__main__":
    sys.exit(main())
