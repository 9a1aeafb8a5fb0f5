"""The collapse verdict on labelled cases whose truth is known by construction, and its estimators.

Synthetic codes: n digits whose posterior means are a_j·u_j (u_j ~ N(0, 1) independent per unit) with
posterior standard deviation σ_j. Their aggregate posterior is N(0, a_j² + σ_j²), so I(x; z_j) =
½ log(1 + a_j²/σ_j²) exactly, and I(x; z) is the sum over units.
"""

import math
import re

import numpy as np
import pytest

import evaluate
import objective

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


def validation_of(z_mean, z_log_var, spread):
    return {**evaluate.code_use(z_mean, z_log_var, gaussian_kl(z_mean, z_log_var)), "reconstruction_spread": spread,
            "kl_nats": gaussian_kl(z_mean, z_log_var)}


def context(beta=1.0, weight=1.0, reduction="sum", likelihood="bernoulli", sigma=None, steps=20_000,
            kl_reduction="sum"):
    return {"effective_beta": beta, "kl_weight": weight, "reconstruction_reduction": reduction,
            "kl_reduction": kl_reduction, "num_pixels": 784, "likelihood": likelihood, "gaussian_sigma": sigma,
            "steps": steps}


@pytest.mark.parametrize("signal, noise", [([1.0], [1.0]), ([3.0, 0.5], [0.2, 1.0]), ([0.05], [1.0])])
def test_information_matches_the_closed_form(signal, noise):
    total, per_unit = evaluate.information(*code(signal, noise))
    np.testing.assert_allclose(per_unit, true_information(signal, noise), atol=0.05)
    assert math.isclose(total, true_information(signal, noise).sum(), abs_tol=0.08)


def test_information_is_zero_for_identical_posteriors_and_capped_at_log_n():
    z_mean, z_log_var = code([0.0, 0.0], [0.7, 1.3])
    total, per_unit = evaluate.information(z_mean, z_log_var)
    assert abs(total) < 1e-12 and np.all(np.abs(per_unit) < 1e-12)
    total, _ = evaluate.information(*code([5.0, 5.0], [1e-3, 1e-3], n=300))  # true I ≈ 17 nats
    assert math.log(300) - 0.01 < total <= math.log(300) + 1e-9


@pytest.mark.parametrize("factor", [0.05, 20.0])
def test_information_and_signal_to_noise_do_not_depend_on_the_scale_of_z(factor):
    z_mean, z_log_var = code([2.0, 0.3], [0.5, 1.0])
    scaled = (factor * z_mean, z_log_var + 2 * math.log(factor))
    before, after = evaluate.code_use(z_mean, z_log_var, 0.0), evaluate.code_use(*scaled, 0.0)
    for key in ("mutual_information_nats", "information_per_unit_nats", "signal_to_noise_per_unit"):
        np.testing.assert_allclose(after[key], before[key], rtol=1e-9, atol=1e-12)
    # Burda's criterion is the scale-dependent one.
    np.testing.assert_allclose(after["posterior_mean_variance"], np.multiply(before["posterior_mean_variance"],
                                                                             factor ** 2), rtol=1e-9)


# The labelled cases: (name, code, spread, context, expected state, a phrase the advice must hold).
HEALTHY = ([2.5, 1.5], [0.3, 0.4])
CASES = [
    ("healthy: the tutorial's sum, trained long", HEALTHY, 0.45, context(), "healthy", "Nothing to change"),
    ("per-pixel mean: β = 784", ([0.002, 0.001], [1.0, 1.0]), 0.0, context(784, 1.0, "mean"), "collapsed",
     "loss.kl_weight: 0.00127551"),
    ("λ = 100 on the sum", ([0.01, 0.0], [1.0, 1.0]), 0.001, context(100, 100), "collapsed", "loss.kl_weight: 1 "),
    ("short β = 1 run: KL from drift, no information", ([0.13, 0.02], [1.3, 1.5]), 0.002, context(steps=24),
     "collapsed", "Train longer"),
    ("healthy, code rescaled by 0.05", ([2.5 * 0.05, 1.5 * 0.05], [0.3 * 0.05, 0.4 * 0.05]), 0.45, context(),
     "healthy", "Nothing to change"),
    ("healthy, code rescaled by 20", ([2.5 * 20, 1.5 * 20], [0.3 * 20, 0.4 * 20]), 0.45, context(), "healthy",
     "Nothing to change"),
    ("latent size 8, two units used", ([2.0, 1.2] + [0.01] * 6, [0.3, 0.5] + [1.0] * 6), 0.4, context(), "partial",
     "free bits"),
    ("free bits keep every unit", ([1.0] * 8, [0.8] * 8), 0.35, context(), "healthy", "Nothing to change"),
    ("Gaussian likelihood, fixed σ = 1", ([0.0, 0.0], [1.0, 1.0]), 0.0, context(likelihood="gaussian", sigma=1.0),
     "collapsed", "Lower loss.gaussian_sigma"),
    ("collapsed after a long β = 1 run", ([0.02, 0.01], [1.0, 1.0]), 0.0, context(), "collapsed", "KL annealing"),
]


@pytest.mark.parametrize("name, unit_code, spread, ctx, state, advice", CASES, ids=[c[0] for c in CASES])
def test_labelled_cases(name, unit_code, spread, ctx, state, advice):
    verdict = evaluate.diagnose(validation_of(*code(*unit_code), spread), ctx)
    assert verdict["state"] == state, verdict["reason"]
    assert verdict["detected"] == (state == "collapsed")
    assert advice in verdict["advice"], verdict["advice"]


def test_each_branchs_wording_is_true_of_its_numbers():
    same_image = evaluate.diagnose(validation_of(*code([0.01], [1.0]), 0.01), context())
    assert "every reconstruction is nearly the same image" in same_image["reason"]
    # Little information but differing reconstructions: the wording must not claim they are all the same.
    differing = evaluate.diagnose(validation_of(*code([0.05], [1.0]), 0.3), context())
    assert differing["state"] == "collapsed"
    assert "same image" not in differing["reason"] and "less than the posterior noise" in differing["reason"]
    assert "decoder ignores" not in differing["reason"]
    partial = evaluate.diagnose(validation_of(*code([2.0, 0.01], [0.3, 1.0]), 0.4), context())
    assert partial["state"] == "partial" and "1 of 2 latent units carry less than" in partial["reason"]
    assert partial["informative_units"] == 1


def test_the_kl_is_split_into_information_and_the_priors_mismatch():
    # Posteriors that carry nothing but sit away from the prior: all of their KL is mismatch.
    z_mean, z_log_var = code([0.0], [0.5])
    z_mean += 2.0
    use = evaluate.code_use(z_mean, z_log_var, gaussian_kl(z_mean, z_log_var))
    assert abs(use["mutual_information_nats"]) < 1e-9
    assert math.isclose(use["marginal_kl_nats"], gaussian_kl(z_mean, z_log_var), rel_tol=1e-9)
    assert use["mutual_information_cap_nats"] == pytest.approx(math.log(N))


@pytest.mark.parametrize("rec, kl", [("sum", "sum"), ("mean", "sum"), ("sum", "mean"), ("mean", "mean")])
@pytest.mark.parametrize("latent_dim", [2, 8])
def test_the_advice_to_lower_beta_names_settings_that_give_the_elbo(rec, kl, latent_dim):
    # For every combination of reductions: a λ with β = 50, then each setting the advice names, fed back
    # through objective.describe, must give β = 1 (by hand: β = λ·kl_scale/rec_scale).
    rec_scale, kl_scale = (1 / 784 if rec == "mean" else 1.0), (1 / latent_dim if kl == "mean" else 1.0)
    weight = 50 * rec_scale / kl_scale
    ctx = context(50.0, weight, rec, kl_reduction=kl)
    text = evaluate.advice("collapsed", 0, latent_dim, ctx)
    suggested = float(re.search(r"loss\.kl_weight: ([0-9.e+-]+) with these reductions", text).group(1))
    assert objective.describe(rec, kl, suggested, latent_dim, 784)["effective_beta"] == pytest.approx(1, rel=1e-5)
    alternative = re.search(r"\(or (.+) with loss\.kl_weight: 1\)", text)
    assert (alternative is None) == ((rec, kl) == ("sum", "sum")), text
    if alternative:
        words = alternative.group(1)
        new_rec = "sum" if "reconstruction_reduction: sum" in words or "both" in words else rec
        new_kl = "sum" if "kl_reduction: sum" in words or "both" in words else kl
        assert objective.describe(new_rec, new_kl, 1.0, latent_dim, 784)["effective_beta"] == 1.0, text
