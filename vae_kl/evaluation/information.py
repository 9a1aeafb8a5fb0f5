"""How much the code is used, measured by information, which does not depend on the scale of z: I(x; z)
under the encoder and I(x; z_j) per latent unit (Hoffman & Johnson 2016), the KL's three parts (Chen
et al. 2018), and, for comparison, the scale-dependent active units of Burda et al. (2016).
"""

import math
from typing import Optional

import numpy as np

import losses
from vae_kl.evaluation import bounds

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016): unit j is active when Var_x E[z_j|x] > 0.01 (scale-dependent).
INFORMATIVE_UNIT_NATS = 0.1  # A unit is informative when I(x; z_j) reaches this many nats.
# Noise draws averaged in I(x; z) and I(x; z_j): one draw left a unit at 0.10 nats flipping between states with the
# seed; 8 divide the draw's standard deviation by about 2.8 (the tutorial's 4-epoch model: 0.133 ± 0.005 nats for its
# weaker unit). Each draw is O(N²·J): for N = 2,000, 0.2 s at J = 2 and 1.5 s at J = 16 on 2 busy cores, so 8 cost
# about what the one draw through TensorFlow did before (1.7 s and 6 s).
INFORMATION_DRAWS = 8
MI_MAX_EXAMPLES = 2000  # Digits in the aggregate-posterior estimate (its cost grows with their square).


def information(z_mean: np.ndarray, z_log_var: np.ndarray, seed: int = bounds.EVAL_SEED,
                draws: int = INFORMATION_DRAWS) -> tuple[float, np.ndarray]:
    """I(x; z) and I(x; z_j) per unit under the encoder, in nats (Hoffman & Johnson 2016).

    I(x; z) = E_x E_{z~q(z|x)} [log q(z|x) - log q(z)], with the aggregate posterior q(z) estimated
    as the average of q(z|x_m) over the n digits given, one z drawn per digit, the estimate
    averaged over `draws` independent draws (information_draws). The estimate is never above
    log n (a code cannot be shown to tell apart more digits than it was shown) and is biased low
    when the true value nears that cap. Per unit, the same with z_j alone. Both are unchanged when
    z is rescaled, unlike the active-unit count. Returns (total, per_unit (J,)).
    """
    totals, per_unit = information_draws(z_mean, z_log_var, seed, draws)
    return float(totals.mean()), per_unit.mean(axis=0)


def information_draws(z_mean: np.ndarray, z_log_var: np.ndarray, seed: int = bounds.EVAL_SEED,
                      draws: int = INFORMATION_DRAWS, max_elements: int = 2 ** 18) -> tuple[np.ndarray, np.ndarray]:
    """information's estimate for each of `draws` noise draws: (totals (draws,), per_unit (draws, J)).

    The draws share the n posteriors that make the aggregate, so their spread measures the noise of
    the draw (the part averaging removes), not the finite-n bias. The first draw is the one earlier
    versions made alone. Computed on blocks of rows × n of at most max_elements, one unit at a time
    (small blocks stay in the cache: a draw for n = 2,000 and J = 2 takes about 0.2 s).
    """
    rng = np.random.default_rng(seed + 1)
    mean, log_var = z_mean.astype("float64"), z_log_var.astype("float64")
    n, latent_dim = mean.shape
    totals, per_unit = np.zeros(draws), np.zeros((draws, latent_dim))
    rows = max(1, max_elements // n)
    for draw in range(draws):
        z = mean + np.exp(0.5 * log_var) * rng.standard_normal(mean.shape)  # (n, latent_dim)
        for start in range(0, n, rows):
            total, units = _information_block(z, np.arange(start, min(n, start + rows)), mean, log_var)
            totals[draw] += total
            per_unit[draw] += units
    return totals / n, per_unit / n


def _information_block(z, index, mean, log_var):
    """Sums over the digits `index` of log q(z_i|x_i) - log q(z_i) and, per unit, of the same with z_ij alone,
    q(z) the average of the n posteriors q(z|x_m). Returns (total, per_unit (J,)).

    log N(z_ij; μ_mj, σ_mj²) is losses.gaussian_log_density written out in numpy, in place: through TensorFlow
    this (rows, n) block per unit, the whole cost of the estimate, takes twice as long."""
    inverse_var, offset = np.exp(-log_var), losses.gaussian_log_normalizer(log_var)
    joint, own_joint, per_unit = np.zeros((len(index), len(mean))), np.zeros(len(index)), np.zeros(mean.shape[1])
    for unit in range(mean.shape[1]):
        terms = np.subtract.outer(z[index, unit], mean[:, unit])  # (rows, n): z_ij - μ_mj
        np.square(terms, out=terms)
        terms *= inverse_var[:, unit]
        terms += offset[:, unit]
        terms *= -0.5  # log q(z_ij | x_m)
        own = terms[np.arange(len(index)), index]
        joint += terms
        own_joint += own
        per_unit[unit] = np.sum(own - _log_mean_exp_rows(terms))
    return float(np.sum(own_joint - _log_mean_exp_rows(joint))), per_unit


def _log_mean_exp_rows(values):
    """log of the mean of exp(values) along each row of a (rows, n) array, overwriting values. (rows,)"""
    top = values.max(axis=1)
    values -= top[:, None]
    np.exp(values, out=values)
    return top + np.log(values.mean(axis=1))


def signal_to_noise(z_mean: np.ndarray, z_log_var: np.ndarray) -> np.ndarray:
    """Var_x E[z_j|x] / E_x Var[z_j|x] per unit: how far apart the digits' codes are, in units of the
    posterior noise. Scale-free; I(x; z_j) ≈ ½ log(1 + SNR) when the codes are Gaussian. (J,)"""
    return z_mean.astype("float64").var(axis=0) / np.exp(z_log_var.astype("float64")).mean(axis=0)


def code_use(z_mean: np.ndarray, z_log_var: np.ndarray, kl_nats: float, seed: int = bounds.EVAL_SEED,
             factorized_prior: bool = True) -> dict:
    """How much the code is used, from the posteriors' moments (n, latent_dim) and the KL (nats/digit).

    Information (scale-free): I(x; z) over at most MI_MAX_EXAMPLES digits with its log N cap, I(x; z_j)
    and the signal-to-noise ratio per unit, the informative units, and the KL's split into I(x; z) +
    KL(q(z) || p(z)) (Hoffman & Johnson 2016; the second part is the KL minus the estimated I). The information
    is the mean over INFORMATION_DRAWS noise draws (`information_draws`), with the standard error of that mean
    (`mutual_information_se_nats`, `information_per_unit_se_nats`: the draws' standard deviation / √draws; it
    covers the noise of the draws, not the bias from the finite N of the aggregate posterior). Scale-
    dependent, kept for comparison: Burda et al.'s active units and the variance of the posterior means.
    """
    count = min(len(z_mean), MI_MAX_EXAMPLES)
    totals, per_unit_draws = information_draws(z_mean[:count], z_log_var[:count], seed)
    total, per_unit = float(totals.mean()), per_unit_draws.mean(axis=0)
    variance = z_mean.astype("float64").var(axis=0)
    return {"mutual_information_nats": total, "mutual_information_cap_nats": math.log(count),
            "mutual_information_examples": int(count), "information_per_unit_nats": per_unit.tolist(),
            "mutual_information_se_nats": _standard_error(totals), "information_draws": int(len(totals)),
            "information_per_unit_se_nats": [_standard_error(values) for values in per_unit_draws.T],
            "signal_to_noise_per_unit": signal_to_noise(z_mean, z_log_var).tolist(),
            "informative_units": int(np.sum(per_unit >= INFORMATIVE_UNIT_NATS)),
            "marginal_kl_nats": kl_nats - float(total), "active_units": int(np.sum(variance > ACTIVE_UNIT_THRESHOLD)),
            "latent_dim": int(z_mean.shape[1]), "posterior_mean_variance": variance.tolist(),
            **kl_parts(totals, per_unit_draws, kl_nats, factorized_prior)}


def kl_parts(totals: np.ndarray, per_unit_draws: np.ndarray, kl_nats: float,
             factorized_prior: bool) -> dict[str, Optional[float]]:
    """The KL averaged over the digits in three parts (Chen et al. 2018): index-code information I(x; z), total
    correlation TC = KL(q(z) || Π_j q(z_j)) and dimension-wise KL Σ_j KL(q(z_j) || p(z_j)), in nats per digit.

    With q(z) and q(z_j) estimated from the same n posteriors as the information, log q(z) - Σ_j log q(z_j)
    is Σ_j I(x; z_j) - I(x; z), so TC costs nothing more, and the dimension-wise KL is the rest, KL - Σ_j I(x; z_j)
    (a prior that factorizes over units only: None otherwise). TC's standard error covers the noise draws.
    Near the log n cap I(x; z) reads low, so TC reads high and the dimension-wise KL low (docs/evaluation.md).
    totals: (draws,) and per_unit_draws: (draws, J) from information_draws; kl_nats: the mean KL."""
    tc_draws = per_unit_draws.sum(axis=1) - totals
    dimension_wise = kl_nats - float(per_unit_draws.sum(axis=1).mean()) if factorized_prior else None
    return {"total_correlation_nats": float(tc_draws.mean()), "total_correlation_se_nats": _standard_error(tc_draws),
            "dimension_wise_kl_nats": dimension_wise}


def _standard_error(values):
    """Standard error of the mean of a few estimates (0.0 for a single one, which has none to measure)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
