"""Evaluate a VAE on its validation digits: the true ELBO, the IWAE bound, how much the code is used, a verdict.

    python evaluate.py --run outputs/<run> [--iwae-k K]

Whatever the training objective was, the numbers here are for β = 1 under the model's own
prior: the negative ELBO = E_q[-log p(x|z)] + KL(q(z|x) || p(z)), in nats per digit, and the
importance-weighted bound of Burda et al. (2016), which is tighter. How much the code is used
is measured by information, which does not depend on the scale of z: I(x; z) under the
encoder and I(x; z_j) per latent unit; how much the decoder uses it, by the reconstruction a
digit's own code saves over another digit's. train.py calls `evaluate_run` at the end of training;
this script re-runs it from the saved model.keras and writes the same numbers into summary.json.
"""

import argparse
import math
import os
import sys

from vae_kl.process import atomic, exits
from vae_kl.runs import folders, records
from vae_kl.spec import config

MAX_IWAE_K = 100_000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="A run folder written by train.py.")
    parser.add_argument("--iwae-k", default=None, help=f"Importance samples, 1 to {MAX_IWAE_K} (default: the run's).")
    return parser.parse_args(argv)


def iwae_k_argument(text):
    """--iwae-k: an integer from 1 to MAX_IWAE_K."""
    try:
        value = int(text)
    except ValueError:
        raise config.ConfigError(f"--iwae-k expects an integer from 1 to {MAX_IWAE_K}, received {text[:40]!r}.")
    if not 1 <= value <= MAX_IWAE_K:
        raise config.ConfigError(f"--iwae-k must be from 1 to {MAX_IWAE_K}, received {value}.")
    return value


def check_run_folder(run_dir):
    """Refuse a folder that holds no finished run (summary.json and model.keras), before anything loads."""
    summary = atomic.read_json(os.path.join(run_dir, "summary.json")) if os.path.isdir(run_dir) else None
    model_path = os.path.join(run_dir, "model.keras")
    if not isinstance(summary, dict) or not os.path.isfile(model_path):
        raise folders.RunFolderError(f"'{run_dir}' holds no finished run (summary.json and model.keras); "
                                  f"pass a folder written by train.py.")
    return summary


def check_arguments(args):
    """(run folder, iwae_k or None) from the command line, every check made before TensorFlow loads."""
    iwae_k = None if args.iwae_k is None else iwae_k_argument(args.iwae_k)
    check_run_folder(args.run)
    return args.run, iwae_k


if __name__ == "__main__":  # Answer --help and bad arguments before TensorFlow loads (it takes seconds), quietly.
    ARGS = parse_args()
    STATUS = exits.guard(lambda: check_arguments(ARGS) and None)
    if STATUS:
        sys.exit(STATUS)
    from vae_kl.process import quiet

    quiet.import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import losses  # noqa: E402
import model  # noqa: E402,F401  Registers the VAE's classes, so model.keras loads in safe mode.
from vae_kl.choices import (
    likelihoods,  # noqa: E402
    priors,  # noqa: E402
)
from vae_kl.data import sources  # noqa: E402
from vae_kl.reports import (
    plots,  # noqa: E402
    run_page,  # noqa: E402
)
from vae_kl.spec import objective  # noqa: E402

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016): unit j is active when Var_x E[z_j|x] > 0.01 (scale-dependent).
INFORMATIVE_UNIT_NATS = 0.1  # A unit is informative when I(x; z_j) reaches this many nats.
COLLAPSED_BELOW_NATS = 0.2  # A code with less information than this tells the decoder almost nothing.
FEW_STEPS = 2000  # Fewer gradient steps than this: a collapsed β <= 1 run is likelier undertrained than stuck.
LARGE_FIXED_SIGMA = 0.3  # A fixed Gaussian σ above this leaves the reconstruction term too weak to use z.
# Collapsed when the decoder gains less than this from a digit's own code over another digit's (decoder_use,
# nats per digit), however much the code carries. A decoder equal to the true p(x|z) of the encoder's joint
# gains I(x; z) plus the lautum information, so at least I(x; z): a code worth COLLAPSED_BELOW_NATS that reaches
# the reconstructions gains at least as much. Measured on the embedded digits (1,000 validation digits): the
# tutorial's model after 4 epochs gains 36.7 ± 1.9 nats with I(x; z) = 1.40; with its first Dense kernel zeroed,
# exactly 0 (every code decodes to the same image); a code with no information fed to a decoder that does read z,
# -0.3 ± 0.3 (300 digits): the threshold sits above that noise and far below any decoder that reads its code.
DECODER_USE_BELOW_NATS = 0.2
# Noise draws averaged in I(x; z) and I(x; z_j): one draw left a unit at 0.10 nats flipping between states with the
# seed; 8 divide the draw's standard deviation by about 2.8 (the tutorial's 4-epoch model: 0.133 ± 0.005 nats for its
# weaker unit). Each draw is O(N²·J): for N = 2,000, 0.2 s at J = 2 and 1.5 s at J = 16 on 2 busy cores, so 8 cost
# about what the one draw through TensorFlow did before (1.7 s and 6 s).
INFORMATION_DRAWS = 8
DECODE_BATCH = 1024  # Latent codes decoded per call, whatever k and the number of digits are; bounds memory.
PATH_POINTS = 1000  # Epochs drawn on the rate-distortion path at most (100,000 took a minute to draw, 1,000 a second).
MI_MAX_EXAMPLES = 2000  # Digits in the aggregate-posterior estimate (its cost grows with their square).
EVAL_SEED = 20240611
STATES = ("healthy", "partial", "collapsed")


def _decode_logits(vae, z):
    return vae.decode_logits(z).numpy()


def encode(vae, x):
    """Posterior moments for many digits, in batches: z_mean, z_log_var as (n, latent_dim) arrays."""
    parts = [vae.encoder_moments(x[i:i + DECODE_BATCH], training=False) for i in range(0, len(x), DECODE_BATCH)]
    return [np.concatenate([np.asarray(p[j], dtype="float32") for p in parts]) for j in range(2)]


def evaluation_log_sigma(vae, x, z_mean):
    """log σ of a Gaussian decoder for evaluation: learned, fixed, or optimal over the first validation digits."""
    if not vae.likelihood.has_sigma:
        return None
    logits = _decode_logits(vae, z_mean[:DECODE_BATCH])
    return float(vae.likelihood.log_sigma(x[:DECODE_BATCH], logits))


def importance_bounds(vae, x, z_mean, z_log_var, k, log_sigma, seed=EVAL_SEED):
    """Per-digit ELBO terms and the IWAE bound with k samples, computed in chunks.

    Returns (reconstruction, iwae_log_likelihood, kl_estimate), each (n,): the Monte Carlo mean
    over the k samples of -log p(x|z); the IWAE bound log (1/k) Σ_i p(x, z_i)/q(z_i|x) (Burda et
    al. 2016, eq. 8); and the Monte Carlo mean of log q(z|x) - log p(z) (the KL for priors
    without a closed form).

    No decoder call gets more than DECODE_BATCH codes, whatever k is: max(1, DECODE_BATCH // k)
    digits at a time, and above k = DECODE_BATCH one digit's samples DECODE_BATCH at a time, the
    log-sum-exp of the weights and the means accumulated chunk by chunk, so memory does not grow
    with k. The noise is drawn in the same order whatever the chunks (one (k, digits, J) block
    per group of digits), so the numbers are those of a single call per group.
    """
    rng = np.random.default_rng(seed)
    n, latent_dim = z_mean.shape
    per_chunk = max(1, DECODE_BATCH // k)
    samples_per_call = min(k, max(1, DECODE_BATCH // per_chunk))
    reconstruction, iwae, kl = np.zeros(n), np.zeros(n), np.zeros(n)
    encode_prior = vae.encode_for_prior()
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
        iwae[part] = top + np.log(total) - math.log(k)
        reconstruction[part], kl[part] = reconstruction_sum / k, kl_sum / k
    return reconstruction, iwae, kl


def sample_terms(vae, xs, mu, log_var, eps, log_sigma, encode_prior):
    """log p(x|z), log p(z) and log q(z|x) in float64, each (s, b), for z = mu + σ·eps with eps (s, b, latent_dim),
    the s·b codes decoded in one call."""
    s, b, latent_dim = eps.shape
    z = mu[None] + np.exp(0.5 * log_var)[None] * eps  # (s, b, latent_dim)
    flat = z.reshape(s * b, latent_dim)
    logits = _decode_logits(vae, flat)
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


def decoder_use(vae, x, z_mean, z_log_var, log_sigma, seed=EVAL_SEED):
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
    for start in range(0, n, DECODE_BATCH):
        codes = np.arange(start, min(n, start + DECODE_BATCH))
        logits = _decode_logits(vae, z[codes])
        own[codes] = _nll_per_digit(vae, x[codes], logits, log_sigma)
        other[receiver[codes]] = _nll_per_digit(vae, x[receiver[codes]], logits, log_sigma)
    gain = other - own
    return float(gain.mean()), float(gain.std(ddof=1) / math.sqrt(n))


def information(z_mean, z_log_var, seed=EVAL_SEED, draws=INFORMATION_DRAWS):
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


def information_draws(z_mean, z_log_var, seed=EVAL_SEED, draws=INFORMATION_DRAWS, max_elements=2 ** 18):
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


def signal_to_noise(z_mean, z_log_var):
    """Var_x E[z_j|x] / E_x Var[z_j|x] per unit: how far apart the digits' codes are, in units of the
    posterior noise. Scale-free; I(x; z_j) ≈ ½ log(1 + SNR) when the codes are Gaussian. (J,)"""
    return z_mean.astype("float64").var(axis=0) / np.exp(z_log_var.astype("float64")).mean(axis=0)


def reconstruction_spread(x, recons):
    """How much reconstructions differ from each other, relative to how much the inputs do.

    The ratio of total per-pixel variance across digits; 0 when every reconstruction is the same
    image. It stays below 1 even for a perfect model of grey levels when the inputs are binary
    (about 0.78 on binarized MNIST), and a blurry but healthy model also scores well below 1.
    """
    spread_in = np.var(x.reshape(len(x), -1), axis=0).sum()
    spread_out = np.var(recons.reshape(len(recons), -1), axis=0).sum()
    return float(spread_out / max(spread_in, 1e-12))


def diagnose(validation, context):
    """The verdict: state (healthy, partial, collapsed), the numbers in words and the next step.

    Collapse is decided by information, not by the KL or the scale of z: a code with less than
    COLLAPSED_BELOW_NATS of I(x; z) is collapsed whatever its KL (a KL can be large while the code
    says nothing, when the aggregate posterior drifts from the prior). A code that carries more is
    collapsed too when the decoder ignores it: its reconstructions gain less than DECODER_USE_BELOW_NATS
    from the digit's own code over another digit's (validation decoder_use_nats; `decoder_ignores_code`
    true). Partial: some units carry less than INFORMATIVE_UNIT_NATS. Healthy: every unit does.

    Args:
        validation: compute_metrics' numbers (without decoder_use_nats, as before it existed, the decoder
            is not judged).
        context: what the verdict's advice needs: effective_beta, kl_weight, reconstruction_reduction,
            kl_reduction, num_pixels, likelihood, gaussian_sigma (a number or None) and steps (gradient steps trained).
    """
    per_unit = validation["information_per_unit_nats"]
    latent_dim, total = len(per_unit), validation["mutual_information_nats"]
    informative = int(sum(value >= INFORMATIVE_UNIT_NATS for value in per_unit))
    spread, use = validation["reconstruction_spread"], validation.get("decoder_use_nats")
    ignored = total >= COLLAPSED_BELOW_NATS and use is not None and use < DECODER_USE_BELOW_NATS
    numbers = (f"I(x; z) = {_nats(total)} nats (this estimate shows at most log N = "
               f"{validation['mutual_information_cap_nats']:.2f}); {informative}/{latent_dim} units carry at "
               f"least {INFORMATIVE_UNIT_NATS:g} nats; KL {_nats(validation['kl_nats'])} nats = {_nats(total)} of "
               f"information + {_nats(validation['marginal_kl_nats'])} of mismatch between the codes' overall "
               f"distribution and the prior; reconstructions vary {spread:.1%} as much as the inputs"
               + ("" if use is None else f"; a digit's own code saves {_nats(use)} nats of reconstruction over "
                                         f"another digit's"))
    if total < COLLAPSED_BELOW_NATS:
        state = "collapsed"
        consequence = ("every reconstruction is nearly the same image" if spread < 0.1 else
                       "the reconstructions of posterior means still differ, but by less than the posterior noise, "
                       "so a sampled code tells the decoder almost nothing about the digit")
        reason = f"posterior collapse: the latent code carries almost no information about the digit ({numbers}); " \
                 f"{consequence}."
    elif ignored:
        state = "collapsed"
        reason = (f"the decoder ignores the code: z carries information about the digit, but decoding another "
                  f"digit's code costs less than {DECODER_USE_BELOW_NATS:g} nats more than its own ({numbers}), so "
                  f"the information does not reach the reconstructions.")
    elif informative < latent_dim:
        state = "partial"
        reason = (f"partial use of the code: {latent_dim - informative} of {latent_dim} latent units carry less than "
                  f"{INFORMATIVE_UNIT_NATS:g} nats each ({numbers}).")
    else:
        state = "healthy"
        reason = f"healthy: every latent unit carries information ({numbers})."
    return {"state": state, "detected": state == "collapsed", "informative_units": informative,
            "decoder_ignores_code": ignored, "reason": reason,
            "advice": advice(state, informative, latent_dim, context, decoder_ignores=ignored)}


def _nats(value):
    """Nats to 3 decimals, with estimates that round to zero printed as 0.000 rather than -0.000."""
    return f"{0.0 if abs(value) < 5e-4 else value:.3f}"


def advice(state, informative, latent_dim, context, decoder_ignores=False):
    """The next step for a verdict, naming the setting and the value to try (decoder_ignores: diagnose found a
    code with information that the decoder does not use)."""
    if state == "healthy":
        return "Nothing to change: every unit of the code is in use."
    if decoder_ignores:
        return ("Check the decoder's weights: the encoder's code carries information but the reconstructions do "
                "not depend on it, which training seldom leaves behind; a decoder whose layer reading z (its first "
                "Dense layer) was altered, zeroed or not restored does exactly this, so restore model.keras from "
                f"the run or retrain. If the weights are as trained, train longer ({context['steps']} gradient "
                "steps so far) so that the decoder learns to read z.")
    beta = context["effective_beta"]
    if beta > 1 + 1e-9:
        elbo = objective.elbo_advice(context["reconstruction_reduction"], context["kl_reduction"], latent_dim,
                                     context["num_pixels"])
        return f"Lower β: effective β = {beta:g} charges {beta:g} nats of reconstruction for every nat of " \
               f"information in z. {elbo}"
    sigma = context.get("gaussian_sigma")
    if state == "collapsed" and likelihoods.FAMILY.get(context["likelihood"]).has_sigma and isinstance(sigma, float) \
            and sigma > LARGE_FIXED_SIGMA:
        return (f"Lower loss.gaussian_sigma: a fixed σ = {sigma:g} makes the reconstruction term weak (it equals "
                f"MSE-sum + {2 * sigma ** 2 * beta:.3g}·KL); try 0.1, or 'learned' or 'optimal'.")
    if state == "collapsed" and context["steps"] < FEW_STEPS:
        return (f"Train longer: only {context['steps']} gradient steps so far (the tutorial takes about 16,400). "
                f"Raise train.epochs or use more digits.")
    if state == "collapsed" and context.get("target_rate") is not None:
        ramp = ("ramp C up from 0 instead (loss.kl_schedule: linear, loss.kl_warmup: 10)" if
                context.get("kl_schedule") == "constant" else "ramp C up more slowly (a larger loss.kl_warmup)")
        return (f"The KL meets C = {context['target_rate']:g} nats with a mismatch between the codes and the prior "
                f"rather than with information about the digit: {ramp}, as Burgess et al. grow C during training, "
                f"so that the decoder learns to read z while its capacity is small.")
    if state == "collapsed":
        return ("Try KL annealing (loss.kl_schedule: linear, loss.kl_warmup: 10) or free bits (loss.free_bits: 0.5): "
                "both let the encoder start using z before the KL's cost bites.")
    return (f"Nothing is needed if {informative} unit(s) are enough for you. To make all {latent_dim} carry information, "
            f"try free bits (loss.free_bits: 0.5, nats per unit) or KL annealing (loss.kl_schedule: linear, "
            f"loss.kl_warmup: 10).")


def verdict_context(vae, steps):
    """diagnose's context for a model: its objective's β and λ, its likelihood, and the steps trained."""
    description = describe_objective(vae)
    sigma = getattr(vae.likelihood, "sigma", None)
    return {"effective_beta": description["effective_beta"], "kl_weight": vae.objective.kl_weight,
            "reconstruction_reduction": vae.objective.reconstruction_reduction,
            "kl_reduction": vae.objective.kl_reduction, "num_pixels": vae.num_pixels,
            "likelihood": vae.likelihood.name_in_config, "steps": int(steps),
            "target_rate": vae.objective.target_rate, "kl_schedule": vae.objective.kl_schedule,
            "gaussian_sigma": float(sigma) if isinstance(sigma, (int, float)) else None}


def describe_objective(vae):
    """objective.describe for a model's own objective, likelihood and sizes."""
    sigma = getattr(vae.likelihood, "sigma", None)
    return objective.describe(vae.objective.reconstruction_reduction, vae.objective.kl_reduction,
                              vae.objective.kl_weight, vae.latent_dim, vae.num_pixels, vae.likelihood.name_in_config,
                              float(sigma) if isinstance(sigma, (int, float)) else None)


def compute_metrics(vae, x, k, seed=EVAL_SEED):
    """Every validation number summary.json reports, plus arrays the figures need.

    Besides the ELBO's terms, the IWAE bound and code_use's numbers: `decoder_use_nats`, how many nats of
    reconstruction a digit's own code saves over another digit's (decoder_use; about 0 when the decoder ignores
    z, whatever the code carries), and `decoder_use_se_nats`, its standard error over the digits (both None for
    a single digit)."""
    z_mean, z_log_var = encode(vae, x)
    log_sigma = evaluation_log_sigma(vae, x, z_mean)
    reconstruction, iwae, kl_estimate = importance_bounds(vae, x, z_mean, z_log_var, k, log_sigma, seed)
    if vae.prior.closed_form_kl:
        kl_per_dim = np.asarray(vae.prior.kl(z_mean.astype("float64"), z_log_var.astype("float64"), None)).mean(axis=0)
        kl, kl_estimator = float(kl_per_dim.sum()), "closed form"
    else:
        kl_per_dim, kl, kl_estimator = None, float(kl_estimate.mean()), f"Monte Carlo, mean over k = {k} samples"
    recons = vae.decode(z_mean[:DECODE_BATCH]).numpy()
    use, use_se = decoder_use(vae, x, z_mean, z_log_var, log_sigma, seed)
    neg_elbo = float(reconstruction.mean()) + kl
    pixels = int(np.prod(x.shape[1:]))
    validation = {
        "examples": int(len(x)), "neg_elbo_nats": neg_elbo,
        "neg_elbo_bits_per_dim": neg_elbo / (pixels * math.log(2)),
        "reconstruction_nats": float(reconstruction.mean()), "kl_nats": kl, "kl_estimator": kl_estimator,
        "kl_per_dim_nats": None if kl_per_dim is None else kl_per_dim.tolist(),
        "iwae_nll_nats": float(-iwae.mean()), "iwae_nll_bits_per_dim": float(-iwae.mean()) / (pixels * math.log(2)),
        "iwae_k": int(k), **code_use(z_mean, z_log_var, kl, seed, vae.prior.kl_per_dimension),
        "reconstruction_spread": reconstruction_spread(x[:DECODE_BATCH], recons), "prior": vae.prior.describe(),
        "decoder_use_nats": use, "decoder_use_se_nats": use_se,
    }
    if log_sigma is not None:
        validation["gaussian_sigma"] = math.exp(log_sigma)
    arrays = {"z_mean": z_mean, "active": np.asarray(validation["posterior_mean_variance"]) > ACTIVE_UNIT_THRESHOLD,
              "kl_per_dim": kl_per_dim, "information": np.asarray(validation["information_per_unit_nats"])}
    return validation, arrays


def code_use(z_mean, z_log_var, kl_nats, seed=EVAL_SEED, factorized_prior=True):
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


def kl_parts(totals, per_unit_draws, kl_nats, factorized_prior):
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


def latent_extent(z_mean, prior_samples, dims=(0, 1), quantile=0.01, margin=0.1):
    """Axis ranges covering the posterior means and the prior: their 1st to 99th percentiles, padded."""
    extent = []
    for dim in dims:
        values = np.concatenate([z_mean[:, dim], prior_samples[:, dim]])
        low, high = np.quantile(values, [quantile, 1 - quantile])
        pad = margin * max(high - low, 1e-3)
        extent += [float(low - pad), float(high + pad)]
    return tuple(extent)


def history_figures(vae, run_dir, history, steps_per_epoch):
    """The figures drawn from metrics.csv's rows: the loss curves, the information per epoch and the KL
    weight over the run's steps (the objective's own schedule, with the weight each epoch logged)."""
    described = describe_objective(vae)
    plots.loss_curves(history, os.path.join(run_dir, "loss_curves.png"),
                      f"Loss per epoch: {described['formula']} (effective β = {described['effective_beta']:g})")
    plots.information_curves(history, os.path.join(run_dir, "information.png"), COLLAPSED_BELOW_NATS,
                             INFORMATIVE_UNIT_NATS, "Information the code carries, per epoch")
    goal, total = vae.objective, vae.objective.total_steps
    epoch_steps, epoch_weights = [row["epoch"] * steps_per_epoch for row in history], [row["kl_weight"] for row in history]
    label = "KL weight λ"
    if goal.chooses_beta:  # GECO's weight is known where it was logged: from its start (β = 1), epoch by epoch.
        steps, weights = [0, *epoch_steps], [goal.kl_weight, *epoch_weights]
        schedule = f"chosen by GECO for κ = {goal.target_distortion:g}"
    elif goal.target_rate is not None:  # Capacity: the schedule ramps the target rate C, not a weight.
        steps = np.linspace(0, total, min(total, 2000) + 1)
        weights, label = np.asarray(goal.rate_at(steps)), "target rate C (nats)"
        epoch_weights = [row.get("target_rate", np.nan) for row in history]
        schedule = f"capacity C up to {goal.target_rate:g} nats ({goal.kl_schedule})"
    else:
        steps = np.linspace(0, total, min(total, 2000) + 1)
        weights, schedule = np.asarray(goal.kl_weight_at(steps)), goal.kl_schedule
    plots.kl_schedule(steps, weights, epoch_steps, epoch_weights, os.path.join(run_dir, "kl_schedule.png"),
                      schedule=schedule, ylabel=label)


def write_figures(vae, run_dir, x, labels, arrays, history, title, steps_per_epoch=None):
    """Every figure of a finished run, from its model, its validation digits and metrics.csv's rows: the
    one function training and `evaluate.py --run` both call."""
    if history and steps_per_epoch:
        history_figures(vae, run_dir, history, steps_per_epoch)
    decode = lambda z: vae.decode(z).numpy()  # noqa: E731
    index = plots.pick_one_per_class(labels)
    plots.reconstructions(x[index], vae.reconstruct(x[index]), labels[index],
                          os.path.join(run_dir, "reconstructions.png"), title)
    active, z_mean = arrays["active"], arrays["z_mean"]
    dims = tuple(np.argsort(-arrays["information"])[:2]) if z_mean.shape[1] > 2 else (0, 1)
    plots.latent_clusters(z_mean, labels, os.path.join(run_dir, "latent_clusters.png"), dims)
    prior_samples = vae.prior.sample(1000, EVAL_SEED, vae.encode_for_prior())
    if vae.latent_dim == 2:
        plots.latent_manifold(decode, os.path.join(run_dir, "latent_space.png"),
                              extent=latent_extent(z_mean, prior_samples),
                              title="Digits decoded across the latent space (1st to 99th percentiles of the "
                                    "codes and the prior)")
    states = ["informative" if value >= INFORMATIVE_UNIT_NATS else "unused" for value in arrays["information"]]
    plots.kl_per_dimension(arrays["kl_per_dim"] if arrays["kl_per_dim"] is not None else arrays["information"],
                           active, os.path.join(run_dir, "kl_per_dim.png"), information=arrays["information"],
                           states=states, title=f"KL and information I(x; z_j) per latent unit: {title}")
    plots.samples(decode(prior_samples[:100]), os.path.join(run_dir, "samples.png"),
                  f"Samples from the prior ({vae.prior.name_in_config})")
    if history:
        kept = np.unique(np.linspace(0, len(history) - 1, min(len(history), PATH_POINTS)).round().astype(int))
        points = [(history[i]["epoch"], history[i]["val_kl"], history[i]["val_reconstruction"]) for i in kept]
        shown = "" if len(kept) == len(history) else f", {len(kept)} of the {len(history)} epochs evenly spaced"
        plots.rate_distortion(points, os.path.join(run_dir, "rate_distortion.png"),
                              f"Rate-distortion path per epoch (validation{shown})")


def evaluate_run(vae, run_dir, x_val, y_val, k, max_examples, history, steps):
    """Compute the validation numbers, the verdict and the figures of a run; returns (validation, verdict)."""
    if max_examples is not None:
        x_val, y_val = x_val[:max_examples], y_val[:max_examples]
    validation, arrays = compute_metrics(vae, x_val, k)
    verdict = diagnose(validation, verdict_context(vae, steps))
    title = (f"β = {describe_objective(vae)['effective_beta']:g}: −ELBO {validation['neg_elbo_nats']:.1f} nats, "
             f"I(x; z) {_nats(validation['mutual_information_nats'])} nats: {verdict['state'].upper()}")
    write_figures(vae, run_dir, x_val, y_val, arrays, history, title, steps // max(1, len(history)))
    return validation, verdict


def load_run(run_dir):
    """A finished run's summary, config and model, or RunFolderError saying what is wrong with the folder."""
    summary, model_path = check_run_folder(run_dir), os.path.join(run_dir, "model.keras")
    dataset = summary.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise folders.RunFolderError(f"{run_dir}/summary.json does not name its dataset; re-run training to rewrite it.")
    try:
        cfg = config.from_stored(config.read_yaml(os.path.join(run_dir, "config.yaml")))
        source, path = sources.source_of(dataset)
        cfg.data = config.from_dict({"data": {**cfg.to_dict()["data"], "source": source, "path": path}}).data
    except config.ConfigError as error:
        raise folders.RunFolderError(f"{run_dir}'s config.yaml or dataset cannot be used: {error}")
    try:
        vae = keras.saving.load_model(model_path, safe_mode=True)
    except Exception as error:  # Keras raises many types for a damaged or unsafe file; all mean "cannot load".
        raise folders.RunFolderError(f"{model_path} cannot be loaded safely ({exits.first_line(error)}); it is damaged, "
                                  f"from another program, or needs code that safe mode refuses to run.")
    if not isinstance(vae, model.VAE):
        raise folders.RunFolderError(f"{model_path} holds a {type(vae).__name__}, not a VAE written by train.py.")
    return summary, cfg, vae


def reevaluate(run_dir, iwae_k=None):
    """Reload a finished run's model and data, recompute its numbers and figures, update summary.json, rewrite
    report.html and print the same short block as train.py."""
    summary, cfg, vae = load_run(run_dir)
    digits = sources.load_digits(cfg.data, cfg.train.seed)
    if digits.x_val.shape[1:] != vae.image_shape:
        raise folders.RunFolderError(f"{run_dir}'s model takes images of shape {vae.image_shape}, but its dataset "
                                  f"{summary['dataset']} has {digits.x_val.shape[1:]}.")
    history = records.read_csv_rows(os.path.join(run_dir, "metrics.csv"))
    epochs = summary.get("epochs_completed") if isinstance(summary.get("epochs_completed"), int) else len(history)
    steps = epochs * math.ceil(len(digits.x_train) / cfg.train.batch_size)
    validation, verdict = evaluate_run(vae, run_dir, digits.x_val, digits.y_val, iwae_k or cfg.evaluation.iwae_k,
                                       cfg.evaluation.max_examples, history, steps)
    run_page.publish(run_dir, records.update_summary(run_dir, validation=validation, collapse=verdict))


def main(argv=None, args=None):
    args = args or parse_args(argv)
    return exits.guard(lambda: reevaluate(*check_arguments(args)))


if __name__ == "__main__":
    sys.exit(main(args=ARGS))
