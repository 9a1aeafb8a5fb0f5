"""The collapse verdict on labelled cases whose truth is known by construction, and its estimators.

Synthetic codes: n digits whose posterior means are a_j·u_j (u_j ~ N(0, 1) independent per unit) with
posterior standard deviation σ_j. Their aggregate posterior is N(0, a_j² + σ_j²), so I(x; z_j) =
½ log(1 + a_j²/σ_j²) exactly, and I(x; z) is the sum over units.
"""

import math
import re

import numpy as np
import pytest

from vae_kl.evaluation import information
from vae_kl.evaluation import verdict as verdicts
from vae_kl.spec import meaning

N = 1000


def code(signal, noise, n=N, seed=0):
    """(z_mean, z_log_var) for units with posterior-mean spread `signal` and posterior std `noise`."""
    rng = np.random.default_rng(seed)
    signal, noise = np.asarray(signal, float), np.asarray(noise, float)
    z_mean = signal * rng.standard_normal((n, len(signal)))
    return z_mean, np.broadcast_to(2 * np.log(noise), z_mean.shape).copy()


def true_information(signal, noise):
    return 0.5 * np.log1p((np.asarray(signal, float) / np.asarray(noise, float)) ** 2)


def gaussian_kl(z_mean, z_log_var):
    return float(np.mean(np.sum(0.5 * (np.exp(z_log_var) + z_mean ** 2 - 1 - z_log_var), axis=1)))


def validation_of(z_mean, z_log_var, spread, decoder_use=None):
    """diagnose's input for a code; decoder_use: the nats a digit's own code saves the decoder (None: not measured)."""
    return {**information.code_use(z_mean, z_log_var, gaussian_kl(z_mean, z_log_var)), "reconstruction_spread": spread,
            "kl_nats": gaussian_kl(z_mean, z_log_var), "decoder_use_nats": decoder_use}


def context(beta=1.0, weight=1.0, reduction="sum", likelihood="bernoulli", sigma=None, steps=20_000,
            kl_reduction="sum"):
    return {"effective_beta": beta, "kl_weight": weight, "reconstruction_reduction": reduction,
            "kl_reduction": kl_reduction, "num_pixels": 784, "likelihood": likelihood,
            "likelihood_options": {"sigma": sigma}, "steps": steps}


@pytest.mark.parametrize("signal, noise", [([1.0], [1.0]), ([3.0, 0.5], [0.2, 1.0]), ([0.05], [1.0])])
def test_information_matches_the_closed_form(signal, noise):
    total, per_unit = information.information(*code(signal, noise))
    np.testing.assert_allclose(per_unit, true_information(signal, noise), atol=0.05)
    assert math.isclose(total, true_information(signal, noise).sum(), abs_tol=0.08)


def test_information_is_zero_for_identical_posteriors_and_capped_at_log_n():
    z_mean, z_log_var = code([0.0, 0.0], [0.7, 1.3])
    total, per_unit = information.information(z_mean, z_log_var)
    assert abs(total) < 1e-12 and np.all(np.abs(per_unit) < 1e-12)
    total, _ = information.information(*code([5.0, 5.0], [1e-3, 1e-3], n=300))  # true I ≈ 17 nats
    assert math.log(300) - 0.01 < total <= math.log(300) + 1e-9


def reference_information_draws(z_mean, z_log_var, seed, draws):
    """The estimator written plainly: full (n, n, J) arrays, scipy's logsumexp, the same noise (draws, n, J)."""
    from scipy.special import logsumexp

    n = len(z_mean)
    eps = np.random.default_rng(seed + 1).standard_normal((draws,) + z_mean.shape)
    std = np.exp(0.5 * z_log_var)
    totals, per_unit = [], []
    for z in z_mean + std * eps:
        log_q = -0.5 * (((z[:, None, :] - z_mean[None]) / std[None]) ** 2 + z_log_var[None] + math.log(2 * math.pi))
        own = log_q[np.arange(n), np.arange(n)]  # (n, J): log q(z_ij | x_i)
        per_unit.append(np.mean(own - (logsumexp(log_q, axis=1) - math.log(n)), axis=0))
        totals.append(np.mean(own.sum(axis=1) - (logsumexp(log_q.sum(axis=2), axis=1) - math.log(n))))
    return np.array(totals), np.array(per_unit)


def test_each_draw_of_the_information_matches_a_plain_reimplementation():
    z_mean, z_log_var = code([1.0, 0.3, 0.0], [0.5, 1.0, 2.0], n=300)
    z_log_var = z_log_var + np.random.default_rng(1).normal(0, 0.3, z_log_var.shape)  # Unequal posteriors.
    for max_elements in (2 ** 18, 1000):  # One block, and blocks of 3 rows.
        totals, per_unit = information.information_draws(z_mean, z_log_var, 7, draws=3, max_elements=max_elements)
        ref_totals, ref_per_unit = reference_information_draws(z_mean, z_log_var, 7, 3)
        np.testing.assert_allclose(totals, ref_totals, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(per_unit, ref_per_unit, rtol=1e-10, atol=1e-12)
    total, units = information.information(z_mean, z_log_var, 7, draws=3)
    assert total == pytest.approx(ref_totals.mean(), rel=1e-10)
    np.testing.assert_allclose(units, ref_per_unit.mean(axis=0), rtol=1e-10)


def test_averaging_draws_steadies_a_unit_near_the_threshold_and_its_standard_error_says_how_much():
    # One unit with I(x; z_j) = ½ log(1 + a²) = 0.1 nats exactly: a² = e^0.2 - 1. The code is fixed; only the
    # evaluation seed changes, as between two evaluations of one model.
    signal = math.sqrt(math.exp(2 * information.INFORMATIVE_UNIT_NATS) - 1)
    z_mean, z_log_var = code([signal], [1.0], n=500)
    seeds = range(12)
    one = [information.information(z_mean, z_log_var, seed, draws=1)[1][0] for seed in seeds]
    several = [information.code_use(z_mean, z_log_var, 0.0, seed) for seed in seeds]
    averaged = [use["information_per_unit_nats"][0] for use in several]
    assert several[0]["information_draws"] == information.INFORMATION_DRAWS == 8
    assert np.std(averaged) < 0.6 * np.std(one), (np.std(averaged), np.std(one))  # About 1/√8 = 0.35 expected.
    # The reported standard error is the spread a re-evaluation would show (within the noise of 12 seeds).
    reported = np.mean([use["information_per_unit_se_nats"][0] for use in several])
    assert 0.5 < reported / np.std(averaged, ddof=1) < 2.0, (reported, np.std(averaged, ddof=1))
    assert all(use["mutual_information_se_nats"] > 0 for use in several)
    assert abs(np.mean(averaged) - information.INFORMATIVE_UNIT_NATS) < 0.03  # Still the closed form on average.


@pytest.mark.parametrize("factor", [0.05, 20.0])
def test_information_and_signal_to_noise_do_not_depend_on_the_scale_of_z(factor):
    z_mean, z_log_var = code([2.0, 0.3], [0.5, 1.0])
    scaled = (factor * z_mean, z_log_var + 2 * math.log(factor))
    before, after = information.code_use(z_mean, z_log_var, 0.0), information.code_use(*scaled, 0.0)
    for key in ("mutual_information_nats", "information_per_unit_nats", "signal_to_noise_per_unit"):
        np.testing.assert_allclose(after[key], before[key], rtol=1e-9, atol=1e-12)
    # Burda's criterion is the scale-dependent one.
    np.testing.assert_allclose(after["posterior_mean_variance"], np.multiply(before["posterior_mean_variance"],
                                                                             factor ** 2), rtol=1e-9)


# The labelled cases: (name, code, spread, decoder use in nats, context, expected state, a phrase the advice must
# hold). A decoder that reads its code saves tens of nats per digit (36.7 measured on the tutorial's model after
# 4 epochs); one that ignores z saves 0.
HEALTHY = ([2.5, 1.5], [0.3, 0.4])
CASES = [
    ("healthy: the tutorial's sum, trained long", HEALTHY, 0.45, 37.0, context(), "healthy", "Nothing to change"),
    ("per-pixel mean: β = 784", ([0.002, 0.001], [1.0, 1.0]), 0.0, 0.0, context(784, 1.0, "mean"), "collapsed",
     "loss.kl_weight: 0.00127551"),
    ("λ = 100 on the sum", ([0.01, 0.0], [1.0, 1.0]), 0.001, 0.01, context(100, 100), "collapsed",
     "loss.kl_weight: 1 "),
    ("short β = 1 run: KL from drift, no information", ([0.13, 0.02], [1.3, 1.5]), 0.002, 0.02, context(steps=24),
     "collapsed", "Train longer"),
    ("healthy, code rescaled by 0.05", ([2.5 * 0.05, 1.5 * 0.05], [0.3 * 0.05, 0.4 * 0.05]), 0.45, 37.0, context(),
     "healthy", "Nothing to change"),
    ("healthy, code rescaled by 20", ([2.5 * 20, 1.5 * 20], [0.3 * 20, 0.4 * 20]), 0.45, 37.0, context(), "healthy",
     "Nothing to change"),
    ("latent size 8, two units used", ([2.0, 1.2] + [0.01] * 6, [0.3, 0.5] + [1.0] * 6), 0.4, 40.0, context(),
     "partial", "free bits"),
    ("free bits keep every unit", ([1.0] * 8, [0.8] * 8), 0.35, 30.0, context(), "healthy", "Nothing to change"),
    ("Gaussian likelihood, fixed σ = 1", ([0.0, 0.0], [1.0, 1.0]), 0.0, 0.0, context(likelihood="gaussian", sigma=1.0),
     "collapsed", "Lower loss.gaussian_sigma"),
    ("collapsed after a long β = 1 run", ([0.02, 0.01], [1.0, 1.0]), 0.0, 0.0, context(), "collapsed", "KL annealing"),
    ("healthy code, decoder ignores it (first Dense kernel zeroed)", HEALTHY, 0.0, 0.0, context(), "collapsed",
     "Check the decoder's weights"),
    ("healthy code, decoder barely reads it", HEALTHY, 0.02, 0.15, context(), "collapsed", "first Dense layer"),
    ("healthy code, decoder ignores it, trained with β = 4", HEALTHY, 0.0, 0.0, context(4, 4), "collapsed",
     "Check the decoder's weights"),
    ("two units used, decoder ignores them", ([2.0, 1.2] + [0.01] * 6, [0.3, 0.5] + [1.0] * 6), 0.0, -0.01,
     context(steps=300), "collapsed", "train longer (300 gradient steps so far)"),
    ("healthy, decoder use not measured (an older summary)", HEALTHY, 0.45, None, context(), "healthy",
     "Nothing to change"),
]


@pytest.mark.parametrize("name, unit_code, spread, use, ctx, state, advice", CASES, ids=[c[0] for c in CASES])
def test_labelled_cases(name, unit_code, spread, use, ctx, state, advice):
    verdict = verdicts.diagnose(validation_of(*code(*unit_code), spread, use), ctx)
    assert verdict["state"] == state, verdict["reason"]
    assert verdict["detected"] == (state == "collapsed")
    assert advice in verdict["advice"], verdict["advice"]
    assert verdict["decoder_ignores_code"] == (state == "collapsed" and "decoder" in name), verdict["reason"]
    assert verdict["reason"].startswith("the decoder ignores the code") == verdict["decoder_ignores_code"]


def test_each_branchs_wording_is_true_of_its_numbers():
    same_image = verdicts.diagnose(validation_of(*code([0.01], [1.0]), 0.01), context())
    assert "every reconstruction is nearly the same image" in same_image["reason"]
    # Little information but differing reconstructions: the wording must not claim they are all the same.
    differing = verdicts.diagnose(validation_of(*code([0.05], [1.0]), 0.3), context())
    assert differing["state"] == "collapsed"
    assert "same image" not in differing["reason"] and "less than the posterior noise" in differing["reason"]
    assert "decoder ignores" not in differing["reason"]
    partial = verdicts.diagnose(validation_of(*code([2.0, 0.01], [0.3, 1.0]), 0.4), context())
    assert partial["state"] == "partial" and "1 of 2 latent units carry less than" in partial["reason"]
    assert partial["informative_units"] == 1
    # No information and a decoder that gains nothing: the code is what is missing, not the decoder's reading.
    nothing = verdicts.diagnose(validation_of(*code([0.01], [1.0]), 0.0, 0.0), context())
    assert nothing["reason"].startswith("posterior collapse") and nothing["decoder_ignores_code"] is False
    ignored = verdicts.diagnose(validation_of(*code(*HEALTHY), 0.0, 0.0), context())
    assert "z carries information about the digit" in ignored["reason"]
    assert "a digit's own code saves 0.000 nats of reconstruction over another digit's" in ignored["reason"]
    assert "healthy" not in ignored["reason"] and "Nothing to change" not in ignored["advice"]


def test_the_kl_is_split_into_information_and_the_priors_mismatch():
    # Posteriors that carry nothing but sit away from the prior: all of their KL is mismatch.
    z_mean, z_log_var = code([0.0], [0.5])
    z_mean += 2.0
    use = information.code_use(z_mean, z_log_var, gaussian_kl(z_mean, z_log_var))
    assert abs(use["mutual_information_nats"]) < 1e-9
    assert math.isclose(use["marginal_kl_nats"], gaussian_kl(z_mean, z_log_var), rel_tol=1e-9)
    assert use["mutual_information_cap_nats"] == pytest.approx(math.log(N))


@pytest.mark.parametrize("rec, kl", [("sum", "sum"), ("mean", "sum"), ("sum", "mean"), ("mean", "mean")])
@pytest.mark.parametrize("latent_dim", [2, 8])
def test_the_advice_to_lower_beta_names_settings_that_give_the_elbo(rec, kl, latent_dim):
    # For every combination of reductions: a λ with β = 50, then each setting the advice names, fed back
    # through meaning.describe, must give β = 1 (by hand: β = λ·kl_scale/rec_scale).
    rec_scale, kl_scale = (1 / 784 if rec == "mean" else 1.0), (1 / latent_dim if kl == "mean" else 1.0)
    weight = 50 * rec_scale / kl_scale
    ctx = context(50.0, weight, rec, kl_reduction=kl)
    text = verdicts.advice("collapsed", 0, latent_dim, ctx)
    suggested = float(re.search(r"loss\.kl_weight: ([0-9.e+-]+)(?: \(= [0-9/]+\))? with these reductions",
                                text).group(1))
    # Written in full: applied, it gives β = 1 to float precision (a rounded 0.00127551 gave 0.99999984).
    assert meaning.describe(rec, kl, suggested, latent_dim, 784)["effective_beta"] == pytest.approx(1, rel=1e-12)
    alternative = re.search(r"\(or (.+) with loss\.kl_weight: 1\)", text)
    assert (alternative is None) == ((rec, kl) == ("sum", "sum")), text
    if alternative:
        words = alternative.group(1)
        new_rec = "sum" if "reconstruction_reduction: sum" in words or "both" in words else rec
        new_kl = "sum" if "kl_reduction: sum" in words or "both" in words else kl
        assert meaning.describe(new_rec, new_kl, 1.0, latent_dim, 784)["effective_beta"] == 1.0, text


@pytest.mark.parametrize("schedule, words", [("constant", "ramp C up from 0 instead (loss.kl_schedule: linear"),
                                             ("linear", "ramp C up more slowly (a larger loss.kl_warmup)")])
def test_a_collapsed_capacity_run_is_told_to_ramp_its_rate(schedule, words):
    # A capacity run's KL can meet C with a mismatch that carries nothing; annealing β or free bits do not apply.
    text = verdicts.advice("collapsed", 0, 2, {**context(), "target_rate": 5.0, "kl_schedule": schedule})
    assert "C = 5 nats" in text and words in text and "free bits" not in text
    assert "KL annealing" in verdicts.advice("collapsed", 0, 2, {**context(), "target_rate": None})
