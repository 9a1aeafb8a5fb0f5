"""The effective β and the warnings that teach, checked by hand."""

import math

import pytest

import config
import objective


@pytest.mark.parametrize("rec, kl, weight, beta", [
    ("sum", "sum", 1.0, 1.0),  # The tutorial: the ELBO.
    ("mean", "sum", 1.0, 784.0),  # The user's change: (1/784)·[Σ BCE + 784·KL].
    ("mean", "mean", 1.0, 392.0),  # Old tutorial versions averaged both.
    ("sum", "mean", 1.0, 0.5),
    ("mean", "sum", 1 / 784, 1.0),  # λ = 1/784 restores the ELBO.
    ("sum", "sum", 4.0, 4.0),
])
def test_effective_beta(rec, kl, weight, beta):
    got = objective.describe(rec, kl, weight, latent_dim=2, num_pixels=784)
    assert math.isclose(got["effective_beta"], beta, rel_tol=1e-12)
    assert math.isclose(got["beta_norm"], beta * 2 / 784, rel_tol=1e-12)


def test_mean_reconstruction_formula_reads_as_a_multiple_of_the_elbo():
    got = objective.describe("mean", "sum", 1.0, 2, 784)
    assert got["formula"] == "loss = 1/784·[Σ BCE + 784·KL]"
    assert got["loss_scale"] == 1 / 784


@pytest.mark.parametrize("rec, kl", [("sum", "sum"), ("mean", "sum"), ("mean", "mean"), ("sum", "mean")])
def test_kl_weight_norm_gives_beta_norm_back(rec, kl):
    weight = objective.resolve_kl_weight(None, 0.25, rec, kl, 8, 784)
    got = objective.describe(rec, kl, weight, 8, 784)
    assert math.isclose(got["beta_norm"], 0.25, rel_tol=1e-12)
    assert math.isclose(got["effective_beta"], 0.25 * 784 / 8, rel_tol=1e-12)


def test_fixed_gaussian_sigma_states_the_mse_equivalent_beta():
    got = objective.describe("sum", "sum", 1.0, 2, 784, "gaussian", 0.1)
    assert math.isclose(got["sse_equivalent_beta"], 2 * 0.1 ** 2, rel_tol=1e-12)
    assert "MSE-sum + 0.02·KL" in objective.statement(got, 2, 784)


def warnings_for(**loss):
    cfg = config.from_dict({"loss": loss})
    return objective.teaching_warnings(cfg.loss, "none", 2, 784, total_steps=100, warmup_steps=cfg.loss.kl_warmup)


def test_mean_reconstruction_with_summed_kl_is_flagged_with_its_beta():
    text = " ".join(warnings_for(reconstruction_reduction="mean"))
    assert "784×" in text and "posterior collapse" in text


def test_bce_on_grey_levels_is_flagged_and_the_tutorial_gets_no_collapse_warning():
    notes = warnings_for()
    assert any("grey-level" in n for n in notes)
    assert not any("collapse" in n for n in notes)


def test_schedule_that_never_reaches_its_weight_is_flagged():
    assert any("never reaches" in n for n in warnings_for(kl_schedule="linear", kl_warmup=500,
                                                          kl_warmup_unit="steps"))
    assert not any("never reaches" in n for n in warnings_for(kl_schedule="linear", kl_warmup=50,
                                                              kl_warmup_unit="steps"))
