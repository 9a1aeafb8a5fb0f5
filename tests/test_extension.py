""""One home per idea", proven: a likelihood, a prior and a KL schedule defined in this file, registered,
and trained through train.run with no other file edited; and every registered choice (these three
included) built, described, warned about, saved and reloaded."""

import csv
import math
import os

import keras
import numpy as np
import pytest
from keras import ops

import model
import train
from conftest import quick_config
from vae_kl.choices import likelihoods, priors, schedules
from vae_kl.spec import config, objective, plan


class Laplace(likelihoods.Likelihood):
    """Laplace(x; sigmoid(logits), b) per pixel value with a fixed b: the L1 reconstruction loss."""

    name_in_config, formula = "laplace_test", "Σ Laplace NLL"
    b = 0.1

    def nll(self, x, logits, log_sigma=None):
        return ops.abs(x - ops.sigmoid(logits)) / self.b + math.log(2 * self.b)


class LaplacePrior(priors.Prior):
    """p(z) = Π_j ½ exp(-|z_j|): no per-dimension closed form here, so the KL is the one-sample estimate."""

    name_in_config = "laplace_test"

    def log_prob(self, z, encode=None):
        return ops.sum(-ops.abs(z) - math.log(2.0), axis=-1)

    def sample(self, n, seed, encode=None):
        return np.random.default_rng(seed).laplace(size=(n, self.latent_dim)).astype("float32")


class Step(schedules.Schedule):
    """0 during the warm-up, then 1 at once."""

    name_in_config, settings_read, needs_warmup = "step_test", ("kl_warmup", "kl_warmup_unit"), True

    def multiplier(self, step):
        return ops.cast(step >= self.warmup_steps, "float32")

    def first_full_step(self):
        return self.warmup_steps if self.warmup_steps < self.total_steps else None


NEW = ((likelihoods.FAMILY, Laplace), (priors.FAMILY, LaplacePrior), (schedules.FAMILY, Step))


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register the three new choices for this file's tests only (other files check the shipped names)."""
    for family, cls in NEW:
        family.register(cls)
    yield
    for family, cls in NEW:
        family.choices.pop(cls.name_in_config)


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_new_likelihood_trains_and_is_described_by_its_own_formula(tmp_path):
    summary = train.run(quick_config(tmp_path, "loss.likelihood=laplace_test", "output.run_name=likelihood"))
    assert summary["status"] == "complete"
    assert summary["objective"]["formula"] == "loss = 1·[Σ Laplace NLL + 1·KL]"
    assert summary["objective"]["likelihood"]["name"] == "laplace_test"
    vae = keras.saving.load_model(os.path.join(tmp_path, "likelihood", "model.keras"), safe_mode=True)
    assert isinstance(vae.likelihood, Laplace)


def test_a_new_prior_trains_with_its_monte_carlo_kl_and_refuses_free_bits(tmp_path):
    summary = train.run(quick_config(tmp_path, "model.prior=laplace_test", "output.run_name=prior"))
    assert summary["status"] == "complete"
    assert summary["objective"]["prior"]["kl"].startswith("Monte Carlo")
    assert summary["validation"]["kl_nats"] > 0
    with pytest.raises(config.ConfigError, match="laplace_test prior's KL does not split per dimension"):
        quick_config(tmp_path, "model.prior=laplace_test", "loss.free_bits=0.5")


def test_a_new_schedule_trains_with_its_multiplier_and_its_traits(tmp_path):
    with pytest.raises(config.ConfigError, match="'step_test' needs loss.kl_warmup >= 1"):
        quick_config(tmp_path, "loss.kl_schedule=step_test")
    cfg = quick_config(tmp_path, "loss.kl_schedule=step_test", "loss.kl_warmup=1", "train.epochs=2",
                       "output.run_name=schedule")
    summary = train.run(cfg)
    assert summary["status"] == "complete"
    first, second = read_metrics(os.path.join(tmp_path, "schedule"))
    # The first epoch (steps 0-9, all in the warm-up of 10 steps) trains on the reconstruction alone, the
    # second on the ELBO: the training loss shows which weight each step used.
    assert float(first["kl"]) > 0.1
    assert float(first["loss"]) == pytest.approx(float(first["reconstruction"]), rel=1e-5)
    assert float(second["loss"]) == pytest.approx(float(second["neg_elbo"]), rel=1e-5)
    ignored = objective.ignored_schedule_settings(config.from_dict({"loss": {"kl_schedule": "step_test",
                                                                          "kl_warmup": 3, "kl_cycles": 2}}).loss)
    assert ignored == ["loss.kl_cycles 2"]


def every_choice():
    # Collected before the fixture runs: the new choices are listed here by hand, the shipped ones by registry.
    shipped = [(f.key, name) for f in (likelihoods.FAMILY, priors.FAMILY, schedules.FAMILY) for name in f.names()]
    return shipped + [(family.key, cls.name_in_config) for family, cls in NEW]


def settings_for(key, name):
    """A valid config choosing `name` for `key`, with the settings that choice needs."""
    section, field = key.split(".")
    raw = {section: {field: name}}
    if key == "loss.kl_schedule" and schedules.FAMILY.get(name).needs_warmup:
        raw["loss"]["kl_warmup"] = 1
    return raw


@pytest.mark.parametrize("key, name", every_choice())
def test_every_registered_choice_builds_describes_warns_saves_and_reloads(key, name, tmp_path):
    cfg = config.from_dict(settings_for(key, name))
    run_plan = plan.Plan.from_config(cfg, (28, 28, 1), train_examples=256)
    assert "Objective: loss = " in run_plan.statement and run_plan.expectation.startswith("Expect:")
    vae = model.build_vae(cfg.model, cfg.loss, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), objective=run_plan.objective)
    assert vae.likelihood.describe()["name"] == cfg.loss.likelihood
    assert vae.prior.describe()["name"] == cfg.model.prior
    x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype("float32")
    terms = {k: float(v) for k, v in vae.test_step(x).items()}
    assert all(np.isfinite(list(terms.values())))
    if vae.prior.closed_form_kl:
        assert terms["kl"] >= 0
    path = os.path.join(tmp_path, "model.keras")
    vae.save(path)
    clone = keras.saving.load_model(path, safe_mode=True)
    assert type(clone.likelihood) is type(vae.likelihood) and type(clone.prior) is type(vae.prior)
    assert clone.objective == vae.objective
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(vae(x)), rtol=1e-5, atol=1e-6)
