"""The β = 1 bounds on -log p(x), whatever the training objective was: the negative ELBO's terms and the
importance-weighted bound of Burda et al. (2016), and how much the decoder uses the code.
"""

import math
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

import losses
from vae_kl.choices import priors
from vae_kl.evaluation import codes

EVAL_SEED = 20240611


def evaluation_log_sigma(vae: Any, x: np.ndarray, z_mean: np.ndarray) -> Optional[float]:
    """log σ of a Gaussian decoder for evaluation: learned, fixed, or optimal over the first validation digits."""
    if not vae.likelihood.has_sigma:
        return None
    logits = codes.decode_logits(vae, z_mean[:codes.DECODE_BATCH])
    return float(vae.likelihood.log_sigma(x[:codes.DECODE_BATCH], logits))


def chunks(k: int) -> tuple:
    """(digits per chunk, samples per decoder call) of importance_bounds for k samples (see it)."""
    per_chunk = max(1, codes.DECODE_BATCH // k)
    return per_chunk, min(k, max(1, codes.DECODE_BATCH // per_chunk))


def seconds_per_code(vae: Any, x: np.ndarray, z_mean: np.ndarray, z_log_var: np.ndarray, k: int,
                     log_sigma: Optional[float]) -> tuple[float, int]:
    """(seconds, codes): what one decoder call of importance_bounds' size takes per decoded code, timed after an
    untimed call that traces it, and that call's number of codes. The estimate of a whole evaluation."""
    per_chunk, samples = chunks(k)
    xs, mu, log_var = x[:per_chunk], z_mean[:per_chunk], z_log_var[:per_chunk]
    eps = np.zeros((samples, len(xs), z_mean.shape[1]), "float32")
    sample_terms(vae, xs, mu, log_var, eps, log_sigma, vae.encode)
    started = time.perf_counter()
    sample_terms(vae, xs, mu, log_var, eps, log_sigma, vae.encode)
    return (time.perf_counter() - started) / eps[..., 0].size, eps[..., 0].size


def importance_bounds(vae: Any, x: np.ndarray, z_mean: np.ndarray, z_log_var: np.ndarray, k: int,
                      log_sigma: Optional[float], seed: int = EVAL_SEED,
                      progress: Optional[Callable[[int], None]] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-digit ELBO terms and the IWAE bound with k samples, computed in chunks.

    Returns (reconstruction, iwae_log_likelihood, kl_estimate), each (n,): the Monte Carlo mean
    over the k samples of -log p(x|z); the IWAE bound log (1/k) Σ_i p(x, z_i)/q(z_i|x) (Burda et
    al. 2016, eq. 8); and the Monte Carlo mean of log q(z|x) - log p(z) (the KL for priors
    without a closed form).

    No decoder call gets more than DECODE_BATCH codes, whatever k is: max(1, DECODE_BATCH // k)
    digits at a time, and above k = DECODE_BATCH one digit's samples DECODE_BATCH at a time, the
    log-sum-exp of the weights and the means accumulated chunk by chunk, so memory does not grow
    with k. The noise is drawn in the same order whatever the chunks (one (k, digits, J) block
    per group of digits), so the numbers are those of a single call per group. progress: called
    with the number of codes each call decoded (clock.Clock.advance), or None.
    """
    rng = np.random.default_rng(seed)
    n, latent_dim = z_mean.shape
    per_chunk, samples_per_call = chunks(k)
    reconstruction, iwae, kl = np.zeros(n), np.zeros(n), np.zeros(n)
    encode_prior = vae.encode
    for start in range(0, n, per_chunk):
        part = slice(start, start + per_chunk)
        xs, mu, log_var = x[part], z_mean[part], z_log_var[part]
        top, total, reconstruction_sum, kl_sum = None, 0.0, 0.0, 0.0
        for done in range(0, k, samples_per_call):
            eps = rng.standard_normal((min(samples_per_call, k - done), len(xs), latent_dim)).astype("float32")
            log_px_z, log_pz, log_qz = sample_terms(vae, xs, mu, log_var, eps, log_sigma, encode_prior)
            top, total = _streaming_log_sum_exp(top, total, log_px_z + log_pz - log_qz)
            reconstruction_sum = reconstruction_sum - log_px_z.sum(axis=0)
            kl_sum = kl_sum + (log_qz - log_pz).sum(axis=0)
            if progress is not None:
                progress(eps[..., 0].size)
        iwae[part] = top + np.log(total) - math.log(k)
        reconstruction[part], kl[part] = reconstruction_sum / k, kl_sum / k
    return reconstruction, iwae, kl


def sample_terms(vae: Any, xs: np.ndarray, mu: np.ndarray, log_var: np.ndarray, eps: np.ndarray,
                 log_sigma: Optional[float],
                 encode_prior: Callable[..., Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log p(x|z), log p(z) and log q(z|x) in float64, each (s, b), for z = mu + σ·eps with eps (s, b, latent_dim),
    the s·b codes decoded in one call."""
    s, b, latent_dim = eps.shape
    z = mu[None] + np.exp(0.5 * log_var)[None] * eps  # (s, b, latent_dim)
    flat = z.reshape(s * b, latent_dim)
    logits = codes.decode_logits(vae, flat)
    x_rep = np.broadcast_to(xs[None], (s,) + xs.shape).reshape((s * b,) + xs.shape[1:])
    log_px_z = -_nll_per_digit(vae, x_rep, logits, log_sigma).reshape(s, b)
    log_pz = np.asarray(vae.prior.log_prob(flat, encode_prior), dtype="float64").reshape(s, b)
    log_qz = np.asarray(priors.diagonal_normal_log_prob(z.astype("float64"), mu[None].astype("float64"),
                                                         log_var[None].astype("float64")))  # (s, b)
    return log_px_z, log_pz, log_qz


def _nll_per_digit(vae, x, logits, log_sigma):
    """-log p(x|z) summed over pixels, float64 (n,), for images x and decoder logits of the same length."""
    return np.asarray(losses.sum_over_pixels(vae.likelihood.nll(x, logits, log_sigma)), dtype="float64")


def _streaming_log_sum_exp(top, total, values):
    """Fold a chunk of values (s, b) into a running log-sum-exp over axis 0, kept as top + log(total);
    top is None before the first chunk. Returns the new (top, total), each (b,)."""
    chunk_top = values.max(axis=0)
    new_top = chunk_top if top is None else np.maximum(top, chunk_top)
    carried = 0.0 if top is None else total * np.exp(top - new_top)
    return new_top, carried + np.exp(values - new_top).sum(axis=0)


def decoder_use(vae: Any, x: np.ndarray, z_mean: np.ndarray, z_log_var: np.ndarray, log_sigma: Optional[float],
                seed: int = EVAL_SEED,
                progress: Optional[Callable[[int], None]] = None) -> tuple[Optional[float], Optional[float]]:
    """How much the decoder uses the code: E[-log p(x|z')] - E[-log p(x|z)], in nats per digit.

    z ~ q(z|x) is the digit's own code (one draw) and z' the same draw for another digit (a random
    derangement of the digits, so never its own). It is the part of the reconstruction term that
    the code pays for; 0 when the decoder ignores z (every code decodes to the same image), also
    when the encoder carries information. For the true p(x|z) of the encoder's joint it equals
    I(x; z) plus the lautum information, so it is at least I(x; z). Decoded DECODE_BATCH codes at a
    time. Returns (mean, standard error over digits), or (None, None) for fewer than two digits.
    """
    n = len(x)
    if n < 2:
        return None, None
    rng = np.random.default_rng(seed + 2)
    order = rng.permutation(n)
    donor = np.empty(n, dtype=int)
    donor[order] = np.roll(order, -1)  # Digit order[i] is given the code of order[i + 1]: never its own.
    receiver = np.argsort(donor)  # receiver[j]: the digit given code j.
    z = (z_mean + np.exp(0.5 * z_log_var) * rng.standard_normal(z_mean.shape)).astype("float32")
    own, other = np.zeros(n), np.zeros(n)
    for start in range(0, n, codes.DECODE_BATCH):
        part = np.arange(start, min(n, start + codes.DECODE_BATCH))
        logits = codes.decode_logits(vae, z[part])
        own[part] = _nll_per_digit(vae, x[part], logits, log_sigma)
        other[receiver[part]] = _nll_per_digit(vae, x[receiver[part]], logits, log_sigma)
        if progress is not None:
            progress(len(part))
    gain = other - own
    return float(gain.mean()), float(gain.std(ddof=1) / math.sqrt(n))
