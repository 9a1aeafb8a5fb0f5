"""Weights chosen by a target. GECO (loss.kl_weight: auto with loss.target_distortion κ): the config, the
multiplier's update against a numpy re-implementation, the loss it weights, and a run that reports its β,
saves it and resumes with it. Capacity (loss.target_rate C): the config, the loss against numpy, a run
that reports the rate it reached."""

import csv
import json
import math
import os
import re
import zipfile

import keras
import numpy as np
import pytest

import model
import train
from conftest import build_vae, interrupting_callback, quick_config
from vae_kl.parts import geco
from vae_kl.spec import config, plan
from vae_kl.training import targets

X = np.random.default_rng(0).uniform(size=(16, 28, 28, 1)).astype("float32")


@pytest.mark.parametrize("loss, message", [
    ({"kl_weight": "auto"}, "loss.target_distortion, which is not set"),
    ({"target_distortion": 100}, "only read with loss.kl_weight: auto"),
    ({"geco_rate": 0.5}, "only read with loss.kl_weight: auto"),
    ({"geco_patience": 10}, "only read with loss.kl_weight: auto"),
    ({"kl_weight": "auto", "target_distortion": 100, "geco_patience": -1}, "geco_patience must be >= 0"),
    ({"kl_weight": "auto", "target_distortion": 100, "kl_schedule": "linear", "kl_warmup": 2},
     "kl_schedule must be constant"),
    ({"kl_weight": "auto", "target_distortion": 100, "kl_weight_norm": 1}, "both set"),
    ({"kl_weight": "auto", "target_distortion": -2e7}, "must be >= -10000000.0, received -20000000.0"),
])
def test_geco_settings_are_validated(loss, message):
    with pytest.raises(config.ConfigError, match=message):
        config.from_dict({"loss": loss})
    with pytest.raises(config.ConfigError, match="not available with train.distribute mirrored"):
        config.from_dict({"loss": {"kl_weight": "auto", "target_distortion": 100}, "train": {"distribute": "mirrored"}})


@pytest.mark.parametrize("loss, refused", [
    ({"target_distortion": 0.0}, "not above 0, the least the bernoulli likelihood's reconstruction"),
    ({"target_distortion": -5.0}, "a sum of −log probabilities, never below 0"),
    ({"target_distortion": 0.5}, None),
    ({"likelihood": "gaussian", "gaussian_sigma": 0.1, "target_distortion": -1100.0},  # The floor is -1084.8.
     f"not above {784 * math.log(0.1 * math.sqrt(2 * math.pi)):.6g}, the least the gaussian"),
    ({"likelihood": "gaussian", "gaussian_sigma": 0.1, "target_distortion": -1000.0}, None),
    ({"likelihood": "gaussian", "gaussian_sigma": "optimal", "target_distortion": -1e5}, None),  # No floor.
    ({"likelihood": "continuous_bernoulli", "target_distortion": -1500.0}, None),
    ({"likelihood": "continuous_bernoulli", "target_distortion": 0.0}, None),
])
def test_kappa_is_refused_only_below_what_the_likelihood_can_reach(loss, refused):
    cfg = config.from_dict({"loss": {"kl_weight": "auto", **loss}})
    if refused is None:
        plan.check_target_distortion(cfg.loss, 784)
        goal = plan.Plan.from_config(cfg, (28, 28, 1), 4000).objective
        assert goal.target_distortion == loss["target_distortion"]
        assert goal.geco_unit == max(abs(loss["target_distortion"]), 78.4)
        return
    with pytest.raises(config.ConfigError, match=re.escape(refused)):
        plan.check_target_distortion(cfg.loss, 784)


def test_a_kappa_below_the_floor_is_one_error_line(capsys):
    assert train.main(["--set", "loss.kl_weight=auto", "--set", "loss.target_distortion=-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: loss.target_distortion κ = -5 nats is not above 0")


def geco_reference(reconstructions, kappa, rate, smoothing, patience, pixels=784):
    """GECO's update in plain Python: the moving average of c = (reconstruction - κ)/s with s = |κ|, at least
    0.1 nat per pixel (so c = reconstruction/κ - 1 for κ >= 78.4 on MNIST), the hold (log λ keeps 0
    until the average reaches 0 or has not fallen by 1e-3 for `patience` steps), then log λ += rate·average,
    clipped to ±13.8. Returns log λ and whether it was held, after each step."""
    log_multiplier, average, best, stalled, held, after = 0.0, None, None, 0, True, []
    for reconstruction in reconstructions:
        c = (reconstruction - kappa) / max(abs(kappa), 0.1 * pixels)
        average = c if average is None else smoothing * average + (1 - smoothing) * c
        if best is None or average < best - 1e-3:
            best, stalled = average, 0
        else:
            stalled += 1
        held = held and average > 0 and stalled < patience
        if not held:
            log_multiplier = min(max(log_multiplier + rate * average, -13.8), 13.8)
        after.append((log_multiplier, held))
    return after


@pytest.mark.parametrize("likelihood, kappa, patience, held_steps", [
    ("bernoulli", 300.0, 0, 0),    # No hold: Rezende & Viola's update from the first step.
    ("bernoulli", 300.0, 3, 3),    # κ out of reach, the constraint's average barely moving: released after 3 steps.
    ("bernoulli", 800.0, 500, 0),  # κ reached at once (the reconstruction of these images is about 545 nats).
    ("bernoulli", 40.0, 0, 0),     # |κ| below 0.1 nat per pixel: the unit is 78.4 nats, not κ.
    ("continuous_bernoulli", 0.0, 0, 0),       # A density: κ = 0 is allowed, and the constraint defined.
    ("continuous_bernoulli", -1500.0, 0, 0),   # And a negative κ: c > 0 while the NLL is above it.
])
def test_the_multiplier_follows_a_moving_average_of_the_constraint(likelihood, kappa, patience, held_steps):
    rate, smoothing = 0.05, 0.9
    vae = build_vae(loss__kl_weight="auto", loss__target_distortion=kappa, loss__geco_rate=rate,
                    loss__geco_smoothing=smoothing, loss__geco_patience=patience, loss__likelihood=likelihood)
    reconstructions, betas, held = [], [], []
    for _ in range(6):
        betas.append(float(vae.geco.beta()))  # The β the step trains with.
        reconstructions.append(float(vae.train_step(X)["reconstruction"]))
        vae.terms_tracker.reset_state()  # So the next step reports its own batch, not a running mean.
        held.append(bool(float(vae.geco.held)))
    reference = geco_reference(reconstructions, kappa, rate, smoothing, patience)
    assert [h for _, h in reference] == held and sum(held) == held_steps
    for step in range(len(reference)):
        assert betas[step] == pytest.approx(math.exp(-reference[step - 1][0]) if step else 1.0, rel=1e-5)
    assert float(vae.geco.log_multiplier) == pytest.approx(reference[-1][0], rel=1e-5, abs=1e-7)
    assert float(vae.geco.beta()) == pytest.approx(math.exp(-reference[-1][0]), rel=1e-5)
    assert reference[-1][0] != 0  # Released by the end: the multiplier moved.


def test_a_geco_model_saved_before_the_hold_loads_released_with_its_multiplier():
    # tests/fixtures/v3_geco.keras: a GECO VAE saved (after 3 steps) by the version whose multiplier had no hold.
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures")
    reference = np.load(os.path.join(fixtures, "v3_geco_reference.npz"))
    vae = keras.saving.load_model(os.path.join(fixtures, "v3_geco.keras"), safe_mode=True)
    assert float(vae.geco.log_multiplier) == pytest.approx(float(reference["log_multiplier"]), rel=1e-7)
    assert float(vae.geco.constraint) == pytest.approx(float(reference["constraint"]), rel=1e-7)
    assert float(vae.geco.held) == 0  # It was integrating: it goes on doing so.
    assert vae.objective.chooses_beta and vae.objective.geco_patience == 500  # The new key takes its default.
    np.testing.assert_allclose(np.asarray(vae(reference["x"])), reference["recon"], rtol=1e-5, atol=1e-6)


def test_a_geco_model_saved_before_its_variables_were_named_loads_its_whole_state():
    # tests/fixtures/v4_geco.keras: saved by the version with the hold (five GECO variables) that did not yet
    # record "own_variables" in its config; released by its patience after 3 steps.
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures")
    reference = np.load(os.path.join(fixtures, "v4_geco_reference.npz"))
    vae = keras.saving.load_model(os.path.join(fixtures, "v4_geco.keras"), safe_mode=True)
    for name in ("log_multiplier", "constraint", "held", "best", "stalled"):
        assert float(getattr(vae.geco, name)) == pytest.approx(float(reference[name]), rel=1e-7), name
    assert float(vae.geco.stalled) == 2 and float(vae.geco.held) == 0
    np.testing.assert_allclose(np.asarray(vae(reference["x"])), reference["recon"], rtol=1e-5, atol=1e-6)


def test_a_model_whose_own_variables_this_version_does_not_know_is_refused(tmp_path):
    vae = build_vae(loss__kl_weight="auto", loss__target_distortion=100.0)
    assert vae.get_config()["own_variables"] == model.OWN_VARIABLES
    path = str(tmp_path / "later.keras")
    vae.save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    saved = json.loads(files["config.json"])
    saved["config"]["own_variables"] = "geco-9"  # As a later version would write a new layout.
    files["config.json"] = json.dumps(saved).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    with pytest.raises(ValueError, match="own variables as 'geco-9', which this version does not know"):
        keras.saving.load_model(path, safe_mode=True)


def test_the_loss_weights_the_kl_by_the_chosen_beta():
    vae = build_vae(loss__kl_weight="auto", loss__target_distortion=100.0, loss__reconstruction_reduction="mean")
    vae.geco.log_multiplier.assign(math.log(4.0))  # β = 1/4.
    terms = {k: float(v) for k, v in vae.test_step(X).items()}
    assert terms["loss"] == pytest.approx((terms["reconstruction"] + 0.25 * terms["kl"]) / 784, rel=1e-5)
    assert float(geco.kl_weight_in_force(vae)) == pytest.approx(0.25 / 784, rel=1e-5)  # The λ of that β.


class BetaAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.beta = float(self.model.geco.beta())


def test_a_geco_run_reports_its_beta_saves_it_and_resumes_with_it(tmp_path):
    cfg = quick_config(tmp_path, "train.epochs=2", "loss.kl_weight=auto", "loss.target_distortion=150",
                       "loss.geco_rate=0.05", "loss.geco_patience=0", "output.run_name=geco")
    status, run_dir = train.train(cfg, callbacks=[interrupting_callback(after=1)])
    assert status == 130
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as handle:
        (first,) = list(csv.DictReader(handle))
    assert float(first["beta"]) < 1  # The reconstruction is far above κ = 150 after one short epoch: β fell.
    start = BetaAtStart()
    summary = train.run(cfg, callbacks=[start])
    assert start.beta == float(first["beta"])  # The checkpoint held the multiplier.
    geco = summary["geco"]
    assert summary["status"] == "complete" and geco["target_distortion"] == 150
    assert 0 < geco["final_beta"] < float(first["beta"])
    assert geco["final_kl_weight"] == pytest.approx(geco["final_beta"])
    clone = keras.saving.load_model(os.path.join(run_dir, "model.keras"), safe_mode=True)
    assert float(clone.geco.beta()) == pytest.approx(geco["final_beta"], rel=1e-6)
    assert clone.objective.target_distortion == 150 and clone.objective.chooses_beta


@pytest.mark.parametrize("loss, message", [
    ({"rate_weight": 10}, "only read with loss.target_rate"),
    ({"target_rate": 5, "kl_weight": 2}, "loss.kl_weight has no meaning beside it"),
    ({"target_rate": 5, "free_bits": 0.5}, "loss.free_bits has no meaning beside it"),
    ({"target_rate": -1}, "target_rate must be >= 0"),
])
def test_capacity_settings_are_validated(loss, message):
    with pytest.raises(config.ConfigError, match=message):
        config.from_dict({"loss": loss})


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_the_capacity_loss_is_the_reconstruction_plus_gamma_times_the_rate_gap(reduction):
    vae = build_vae(loss__target_rate=3.0, loss__rate_weight=50.0, loss__reconstruction_reduction=reduction,
                    loss__kl_schedule="linear", loss__kl_warmup=20)  # build_vae: 10 steps per epoch.
    # At step 0 of a linear ramp C is 0; move the step counter half-way through the 200-step warm-up.
    vae.optimizer.iterations.assign(100)
    terms = {k: float(v) for k, v in vae.test_step(X).items()}
    scale = 1 / 784 if reduction == "mean" else 1.0
    expected = scale * (terms["reconstruction"] + 50.0 * abs(terms["kl"] - 1.5))  # C = 3 · 100/200.
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)


def test_a_capacity_run_reports_the_rate_it_reached(tmp_path):
    summary = train.run(quick_config(tmp_path, "loss.target_rate=4", "output.run_name=capacity"))
    rate = summary["capacity"]
    assert summary["status"] == "complete" and rate["target_rate"] == 4 and rate["rate_weight"] == 1000
    assert rate["validation_kl_nats"] == summary["validation"]["kl_nats"]
    assert rate["information_nats"] == summary["validation"]["mutual_information_nats"]
    with open(os.path.join(tmp_path, "capacity", "metrics.csv"), newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["target_rate"]) == 4.0  # Constant schedule: C from the first step.
    formula = summary["objective"]["formula"]
    assert "rate_weight·|KL" not in formula and "1000·|KL − C|" in formula


@pytest.mark.parametrize("epoch_betas, reached, held, words", [
    ([1.0, 1.0], 120.0, True, "GECO held β at its start for the whole run"),
    ([0.5, 1e-6, 2e-6], 100.0, False, "β reached its lower bound (1e-06) in epoch 2: the reconstruction stayed "
                                       "above κ"),  # Wound up, eased off.
    ([2.0, 1e6], 60.0, False, "β reached its upper bound (1e+06) in epoch 2: the reconstruction stayed below κ"),
    ([0.5, 0.4], 110.0, False, "is +10.0 % from κ (above it): GECO had not settled"),
    ([0.5, 0.4], 95.0, False, "is -5.0 % from κ (below it)"),
    ([0.5, 0.4], 101.0, False, None),  # Within 2 % of κ and never at the bound: settled, no note.
])
def test_the_geco_summary_says_when_its_beta_is_not_the_weight_for_kappa(epoch_betas, reached, held, words):
    vae = build_vae(loss__kl_weight="auto", loss__target_distortion=100.0)
    vae.geco.log_multiplier.assign(-math.log(epoch_betas[-1]))
    vae.geco.held.assign(float(held))
    history = [{"epoch": i + 1, "beta": beta, "reconstruction": reached} for i, beta in enumerate(epoch_betas)]
    result = targets.geco_result(vae, history, {"reconstruction_nats": reached})
    assert result["final_beta"] == pytest.approx(epoch_betas[-1], rel=1e-4)
    assert (result.get("note") is None) if words is None else words in result["note"]
    assert result["held_to_the_end"] is held


# GECO for densities: a κ at or below 0 for the continuous Bernoulli (its NLL is negative within an epoch on
# MNIST), and a κ near 0 for a Gaussian with the optimal σ, both reached within a few per cent of the
# constraint's unit in 8 short epochs (2,000 embedded digits, batch 32, geco_rate 0.5).
DENSITY_RUN = ["data.limit=2000", "train.batch_size=32", "train.epochs=8", "loss.kl_weight=auto", "loss.geco_rate=0.5"]


@pytest.mark.parametrize("likelihood, kappa", [
    (["loss.likelihood=continuous_bernoulli"], -2500.0),
    (["loss.likelihood=gaussian", "loss.gaussian_sigma=optimal"], 40.0),
])
def test_geco_reaches_its_kappa_with_a_density(tmp_path, likelihood, kappa):
    summary = train.run(quick_config(tmp_path, *DENSITY_RUN, *likelihood, f"loss.target_distortion={kappa}"))
    result = summary["geco"]
    assert summary["status"] == "complete" and result["target_distortion"] == kappa
    assert abs(result["training_gap_percent"]) < 5, result  # Of s = max(|κ|, 78.4): the constraint itself.
    assert 1 < result["final_beta"] < 1e5 and "bound" not in result.get("note", ""), result
