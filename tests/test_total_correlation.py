"""The total correlation (β-TC-VAE, loss.tc_weight): the minibatch estimator against numpy and against the
closed form of Gaussian codes with a known total correlation, its documented bias, the loss it weights, the
config, the evaluation's three parts of the KL, and a run that logs, reports, saves and reloads it."""

import csv
import math
import os

import numpy as np
import pytest

import losses
import model
import train
from conftest import build_vae, quick_config
from vae_kl.evaluation import information
from vae_kl.runs import saved
from vae_kl.spec import config

X = np.random.default_rng(0).uniform(size=(16, 28, 28, 1)).astype("float32")


def numpy_total_correlation(z, mean, log_var):
    """The minibatch-weighted-sampling estimate written out in float64 numpy, loop by loop."""
    m, j = z.shape
    log_q = -0.5 * ((z[:, None, :] - mean[None]) ** 2 / np.exp(log_var[None]) + log_var[None] + math.log(2 * math.pi))
    joint = np.array([np.log(np.mean(np.exp(log_q[i].sum(axis=1)))) for i in range(m)])  # log q(z_i)
    marginals = np.array([sum(np.log(np.mean(np.exp(log_q[i, :, d]))) for d in range(j)) for i in range(m)])
    return float(np.mean(joint - marginals))


def gaussian_codes(n, correlation, posterior_var, latent_dim=3, seed=0):
    """Posterior means μ ~ N(0, Σ_μ) (unit variances, one correlation) and posterior variance s²: the aggregate
    posterior is N(0, Σ_μ + s²I), whose total correlation is ½[Σ_j log Σ_jj - log det Σ]. Returns
    (z, mean, log_var, the true TC)."""
    rng = np.random.default_rng(seed)
    cov_mu = np.full((latent_dim, latent_dim), correlation) + (1 - correlation) * np.eye(latent_dim)
    mean = rng.multivariate_normal(np.zeros(latent_dim), cov_mu, size=n)
    log_var = np.full_like(mean, math.log(posterior_var))
    z = mean + math.sqrt(posterior_var) * rng.standard_normal(mean.shape)
    cov = cov_mu + posterior_var * np.eye(latent_dim)
    true_tc = 0.5 * (np.sum(np.log(np.diag(cov))) - np.linalg.slogdet(cov)[1])
    return z, mean, log_var, float(true_tc)


def keras_tc(z, mean, log_var):
    return float(losses.total_correlation(*(a.astype("float32") for a in (z, mean, log_var))))


def test_the_estimator_matches_a_numpy_reimplementation():
    z, mean, log_var, _ = gaussian_codes(64, 0.6, 0.3)
    log_var = log_var + np.random.default_rng(1).normal(scale=0.5, size=log_var.shape)  # Unequal posteriors.
    assert keras_tc(z, mean, log_var) == pytest.approx(numpy_total_correlation(z, mean, log_var), abs=2e-4)


@pytest.mark.parametrize("correlation", [0.0, 0.8])
def test_the_estimate_on_a_large_batch_is_near_the_known_total_correlation(correlation):
    # Broad posteriors: each digit's code carries about 1.4 nats, far below log M = 7.6, where the bias is small.
    z, mean, log_var, true_tc = gaussian_codes(2000, correlation, 0.25)
    rho = correlation / 1.25  # Of the aggregate; three units with one correlation: det R = (1 - ρ)²(1 + 2ρ).
    assert true_tc == pytest.approx(-0.5 * math.log((1 - rho) ** 2 * (1 + 2 * rho)), abs=1e-9)
    assert keras_tc(z, mean, log_var) == pytest.approx(true_tc, abs=0.06)
    # The evaluation's estimate from the same posteriors (its own noise draws) agrees as well.
    totals, per_unit = information.information_draws(mean, log_var)
    parts = information.kl_parts(totals, per_unit, 0.0, True)
    assert parts["total_correlation_nats"] == pytest.approx(true_tc, abs=0.06)


def test_the_documented_bias_the_estimate_reads_high_when_the_code_carries_more_than_log_batch():
    z, mean, log_var, true_tc = gaussian_codes(64, 0.8, 1e-4)  # Narrow posteriors: far more than log 64 nats.
    estimate = keras_tc(z, mean, log_var)
    assert estimate > true_tc + 1.0
    assert estimate <= 3 * math.log(64) + 1e-4  # Never above J·log M.


def test_the_loss_weights_the_total_correlation_alone():
    vae = build_vae(loss__kl_weight=2.0, loss__tc_weight=6.0)
    terms = {k: float(v) for k, v in vae.test_step(X).items()}
    assert "tc" in terms
    expected = terms["reconstruction"] + 2.0 * (terms["kl"] - terms["tc"]) + 6.0 * terms["tc"]
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)
    plain = {k: float(v) for k, v in build_vae(loss__kl_weight=2.0).test_step(X).items()}
    assert "tc" not in plain


def test_under_a_schedule_both_weights_ramp_and_mean_reductions_scale_them():
    goal = build_vae(loss__tc_weight=5.0, loss__kl_weight=3.0, loss__reconstruction_reduction="mean",
                     loss__kl_reduction="mean", loss__kl_schedule="linear", loss__kl_warmup=20).objective
    # build_vae's runs have 10 steps per epoch: a 200-step warm-up, a multiplier of 1/4 at step 50.
    rec_scale, kl_scale = 1 / 784, 1 / 2
    assert float(goal.tc_coefficient(50, 2, 784)) == pytest.approx(0.25 * (rec_scale * 5.0 - 3.0 * kl_scale))
    assert float(goal.tc_coefficient(0, 2, 784)) == 0.0


@pytest.mark.parametrize("settings, message", [
    ({"loss": {"tc_weight": 4, "kl_weight": "auto", "target_distortion": 100}}, "kl_weight: auto"),
    ({"loss": {"tc_weight": 4, "target_rate": 5}}, "target_rate"),
    ({"loss": {"tc_weight": 4, "free_bits": 0.5}}, "free_bits"),
    ({"loss": {"tc_weight": 4}, "train": {"distribute": "mirrored"}}, "not built for train.distribute"),
    ({"loss": {"tc_weight": 4}, "train": {"batch_size": 1}}, "batch_size must be >= 2"),
    ({"loss": {"tc_weight": -1}}, "tc_weight must be >= 0"),
])
def test_tc_settings_are_validated(settings, message):
    with pytest.raises(config.ConfigError, match=message):
        config.from_dict(settings)


def test_the_three_parts_add_up_to_the_kl():
    _, mean, log_var, _ = gaussian_codes(500, 0.5, 0.2, latent_dim=2)
    totals, per_unit = information.information_draws(mean, log_var)
    parts = information.kl_parts(totals, per_unit, 3.0, True)
    total = float(totals.mean()) + parts["total_correlation_nats"] + parts["dimension_wise_kl_nats"]
    assert total == pytest.approx(3.0, abs=1e-9)
    assert information.kl_parts(totals, per_unit, 3.0, False)["dimension_wise_kl_nats"] is None


def test_a_tc_run_logs_reports_saves_and_reloads_its_weight(tmp_path):
    summary = train.run(quick_config(tmp_path, "loss.tc_weight=4", "output.run_name=tc"))
    assert summary["status"] == "complete"
    assert summary["objective"]["tc_weight"] == 4 and "4·TC" in summary["objective"]["formula"]
    validation = summary["validation"]
    parts = (validation["mutual_information_nats"] + validation["total_correlation_nats"]
             + validation["dimension_wise_kl_nats"])
    assert parts == pytest.approx(validation["kl_nats"], abs=1e-6)
    with open(os.path.join(tmp_path, "tc", "metrics.csv"), newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert math.isfinite(float(row["tc"])) and math.isfinite(float(row["val_tc"]))
    _, _, vae = saved.load_run(os.path.join(tmp_path, "tc"), model.VAE)
    assert vae.objective.tc_weight == 4 and "tc" in vae.terms_tracker.names
