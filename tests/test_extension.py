""""One home per idea", proven: a likelihood, a prior and a KL schedule with a setting of its own, defined in
this file, registered, validated, explained, warned about and trained through train.run with no other file
edited, then unregistered; and every registered choice (these three included) built, described, saved and
reloaded."""

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
from vae_kl import data
from vae_kl.choices import architectures, likelihoods, priors, schedules
from vae_kl.choices.registry import Setting
from vae_kl.spec import config, plan


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
    """0 for the first fraction of the run's steps, then 1 at once: a setting of its own, declared here."""

    name_in_config, summary = "step_test", "0, then λ"
    settings = (Setting.of("kl_step_fraction_test", float, 0.5, "Fraction of the run trained at weight 0.",
                           gt=0, le=1),)
    fix = "lower loss.kl_step_fraction_test below 1."

    @classmethod
    def options_from(cls, loss_cfg, steps_per_epoch):
        return {"fraction": loss_cfg.kl_step_fraction_test}

    def switch(self):
        return round(self.options["fraction"] * self.total_steps)

    def multiplier(self, step):
        return ops.cast(step >= self.switch(), "float32")

    def first_full_step(self):
        return self.switch() if self.switch() < self.total_steps else None


NEW = ((likelihoods.FAMILY, Laplace), (priors.FAMILY, LaplacePrior), (schedules.FAMILY, Step))


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register the three new choices for this file's tests only (other files check the shipped names), then
    take them away again."""
    for family, cls in NEW:
        family.register(cls)
    yield
    for family, cls in NEW:
        family.unregister(cls.name_in_config)
    with pytest.raises(config.ConfigError, match="Unknown config key 'loss.kl_step_fraction_test'"):
        config.from_dict({"loss": {"kl_step_fraction_test": 0.5}})


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


def test_a_new_schedules_own_setting_is_validated_explained_and_named_where_it_is_unread():
    with pytest.raises(config.ConfigError, match="loss.kl_step_fraction_test must be > 0, received 0.0"):
        config.from_dict({"loss": {"kl_schedule": "step_test", "kl_step_fraction_test": 0}})
    cfg = config.from_dict({"loss": {"kl_schedule": "step_test", "kl_step_fraction_test": 0.25}})
    assert cfg.loss.kl_step_fraction_test == 0.25 and config.Config().loss.kl_step_fraction_test == 0.5
    assert "kl_schedule (constant | linear | sigmoid | cyclical | step_test)" in config.keys_text()  # --help
    lines = plan.explain(plan.Plan.from_config(cfg, (28, 28, 1), 640), data.sources.peek(cfg.data), "python train.py")
    assert "loss.kl_schedule step_test (kl_step_fraction_test 0.25)" in " ".join(lines)  # --explain
    unread = config.from_dict({"loss": {"kl_step_fraction_test": 0.25}})  # The constant schedule does not read it.
    notes = plan.Plan.from_config(unread, (28, 28, 1), 640).notes
    assert any("does not read loss.kl_step_fraction_test 0.25" in note and "step_test reads kl_step_fraction_test"
               in note for note in notes)
    never = config.from_dict({"loss": {"kl_schedule": "step_test", "kl_step_fraction_test": 1.0}})
    notes = plan.Plan.from_config(never, (28, 28, 1), 640).notes  # Its own trait: never reaches full weight.
    assert any("never reaches its final weight" in note and "lower loss.kl_step_fraction_test" in note
               for note in notes)


def test_a_new_schedule_trains_with_its_multiplier_saves_and_reloads(tmp_path):
    cfg = quick_config(tmp_path, "loss.kl_schedule=step_test", "loss.kl_step_fraction_test=0.5", "train.epochs=2",
                       "data.limit=640", "output.run_name=schedule")
    summary = train.run(cfg)
    assert summary["status"] == "complete"
    first, second = read_metrics(os.path.join(tmp_path, "schedule"))
    # 20 steps: the first epoch (steps 0-9) trains on the reconstruction alone, the second on the ELBO; the
    # training loss shows which weight each step used.
    assert float(first["kl"]) > 0.1
    assert float(first["loss"]) == pytest.approx(float(first["reconstruction"]), rel=1e-5)
    assert float(second["loss"]) == pytest.approx(float(second["neg_elbo"]), rel=1e-5)
    clone = keras.saving.load_model(os.path.join(tmp_path, "schedule", "model.keras"), safe_mode=True)
    assert clone.objective.kl_schedule == "step_test" and clone.objective.schedule_options == {"fraction": 0.5}
    assert float(clone.objective.multiplier(9)) == 0.0 and float(clone.objective.multiplier(10)) == 1.0


def every_choice():
    # Collected before the fixture runs: the new choices are listed here by hand, the shipped ones by registry.
    families = (likelihoods.FAMILY, priors.FAMILY, schedules.FAMILY, architectures.FAMILY)
    shipped = [(f.key, name) for f in families for name in f.names()]
    return shipped + [(family.key, cls.name_in_config) for family, cls in NEW]


def settings_for(key, name):
    """A valid config choosing `name` for `key`, with the settings that choice needs."""
    section, field = key.split(".")
    raw = {section: {field: name}}
    if key == "loss.kl_schedule" and schedules.FAMILY.get(name).needs_warmup:
        raw["loss"]["kl_warmup"] = 1
    if key == "model.architecture":
        raw["model"]["latent_dim"] = 3  # Not the default, so that the architecture is built for it.
    return raw


@pytest.mark.parametrize("key, name", every_choice())
def test_every_registered_choice_builds_describes_warns_saves_and_reloads(key, name, tmp_path):
    cfg = config.from_dict(settings_for(key, name))
    run_plan = plan.Plan.from_config(cfg, (28, 28, 1), train_examples=256)
    assert "Objective: loss = " in run_plan.statement and run_plan.expectation.startswith("Expect:")
    vae = model.build_vae(cfg.model, cfg.loss, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), objective=run_plan.objective)
    assert vae.likelihood.describe()["name"] == cfg.loss.likelihood
    assert vae.prior.describe()["name"] == cfg.model.prior and vae.latent_dim == cfg.model.latent_dim
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
