"""The effective β and the warnings that teach, checked by hand."""

import math

import pytest

from vae_kl.spec import config, meaning, objective


@pytest.mark.parametrize("rec, kl, weight, beta", [
    ("sum", "sum", 1.0, 1.0),  # The tutorial: the ELBO.
    ("mean", "sum", 1.0, 784.0),  # The user's change: (1/784)·[Σ BCE + 784·KL].
    ("mean", "mean", 1.0, 392.0),  # keras.io's 2020 code without its `* 28 * 28`: both averaged.
    ("sum", "mean", 1.0, 0.5),  # keras.io's 2020 code as pasted: a mean KL, β = 1/J.
    ("mean", "sum", 1 / 784, 1.0),  # λ = 1/784 restores the ELBO.
    ("sum", "sum", 4.0, 4.0),
])
def test_effective_beta(rec, kl, weight, beta):
    got = meaning.describe(rec, kl, weight, latent_dim=2, num_pixels=784)
    assert math.isclose(got["effective_beta"], beta, rel_tol=1e-12)
    assert math.isclose(got["beta_norm"], beta * 2 / 784, rel_tol=1e-12)


def test_mean_reconstruction_formula_reads_as_a_multiple_of_the_elbo():
    got = meaning.describe("mean", "sum", 1.0, 2, 784)
    assert got["formula"] == "loss = 1/784·[Σ BCE + 784·KL]"
    assert got["loss_scale"] == 1 / 784


@pytest.mark.parametrize("rec, kl", [("sum", "sum"), ("mean", "sum"), ("mean", "mean"), ("sum", "mean")])
def test_kl_weight_norm_gives_beta_norm_back(rec, kl):
    weight = objective.resolve_kl_weight(None, 0.25, rec, kl, 8, 784)
    got = meaning.describe(rec, kl, weight, 8, 784)
    assert math.isclose(got["beta_norm"], 0.25, rel_tol=1e-12)
    assert math.isclose(got["effective_beta"], 0.25 * 784 / 8, rel_tol=1e-12)


def test_fixed_gaussian_sigma_states_the_mse_equivalent_beta():
    got = meaning.describe("sum", "sum", 1.0, 2, 784, "gaussian", {"sigma": 0.1})
    assert math.isclose(got["sse_equivalent_beta"], 2 * 0.1 ** 2, rel_tol=1e-12)
    assert "SSE + 0.02·KL" in meaning.statement(got, 2, 784, "gaussian")
    # SSE/(2σ²) + β·KL ∝ SSE + 2σ²β·KL: the ELBO of σ' with 2σ'² = 2σ²β, so σ' = σ·√β.
    weighted = meaning.describe("sum", "sum", 9.0, 2, 784, "gaussian", {"sigma": 0.1})
    assert math.isclose(weighted["equivalent_sigma"], 0.3, rel_tol=1e-12)
    assert "Gaussian decoder with σ = 0.3" in meaning.statement(weighted, 2, 784, "gaussian")


def warnings_for(**loss):
    cfg = config.from_dict({"loss": loss})
    goal = objective.Objective.from_config(cfg.loss, 2, 784, steps_per_epoch=100, epochs=1)  # 100 steps.
    return meaning.teaching_warnings(cfg.loss, goal, 2, 784)


def test_mean_reconstruction_with_summed_kl_is_flagged_with_its_beta():
    text = " ".join(warnings_for(reconstruction_reduction="mean"))
    assert "784×" in text and "posterior collapse" in text


def test_the_tutorial_gets_no_warning():
    assert warnings_for() == []


@pytest.mark.parametrize("loss, named", [
    ({"kl_warmup": 10}, ["loss.kl_warmup 10"]),
    ({"kl_warmup_unit": "steps", "kl_cycles": 2}, ["loss.kl_warmup_unit 'steps'", "loss.kl_cycles 2"]),
    ({"kl_schedule": "cyclical", "kl_warmup": 5}, ["loss.kl_warmup 5"]),
    ({"kl_schedule": "linear", "kl_warmup": 5, "kl_ramp_ratio": 0.25}, ["loss.kl_ramp_ratio 0.25"]),
])
def test_a_schedule_setting_the_schedule_does_not_read_is_named(loss, named):
    (note,) = [n for n in warnings_for(**loss) if "does not read" in n]
    assert all(key in note for key in named), note
    assert not any("does not read" in n for n in warnings_for(kl_schedule="cyclical", kl_cycles=2))


def test_a_cyclical_ramp_that_never_reaches_one_within_a_cycle_is_flagged():
    # 100 steps in 4 cycles of 25: with r = 0.99 the ramp ends after the cycle's last step (phase 24/25 < 0.99).
    assert any("never reaches" in n for n in warnings_for(kl_schedule="cyclical", kl_ramp_ratio=0.99))
    assert not any("never reaches" in n for n in warnings_for(kl_schedule="cyclical", kl_ramp_ratio=0.9))


@pytest.mark.parametrize("rec, kl, weight, words", [
    ("sum", "sum", 1.0, "ELBO's own balance"),
    ("sum", "mean", 1.0, "sharper reconstructions"),
    ("mean", "mean", 1.0, "posterior collapse"),  # β = 392
    ("mean", "mean", 0.1, "posterior collapse"),  # β = 39.2
    ("sum", "sum", 10.0, "simpler code"),
])
def test_the_expectation_follows_beta(rec, kl, weight, words):
    assert words in meaning.expectation(meaning.describe(rec, kl, weight, 2, 784))


def test_the_expectation_of_a_fixed_gaussian_sigma_reads_the_equivalent_sigma():
    blurry = meaning.describe("mean", "sum", 128 / 60000, 2, 784, "gaussian", {"sigma": 0.5 ** 0.5})
    assert "σ = 0.914" in meaning.expectation(blurry, "gaussian", {"sigma": 0.5 ** 0.5})
    sharp = meaning.describe("sum", "sum", 1.0, 2, 784, "gaussian", {"sigma": 0.05})
    assert "a code in use" in meaning.expectation(sharp, "gaussian", {"sigma": 0.05})
    optimal = meaning.describe("sum", "sum", 1.0, 2, 784, "gaussian", {"sigma": "optimal"})
    assert "the data choose σ" in meaning.expectation(optimal, "gaussian", {"sigma": "optimal"})


def test_schedule_that_never_reaches_its_weight_is_flagged():
    assert any("never reaches" in n for n in warnings_for(kl_schedule="linear", kl_warmup=500,
                                                          kl_warmup_unit="steps"))
    assert not any("never reaches" in n for n in warnings_for(kl_schedule="linear", kl_warmup=50,
                                                              kl_warmup_unit="steps"))
