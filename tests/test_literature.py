"""The literature's reference VAE (Burda, Grosse & Salakhutdinov 2015) as choices: the MLP architecture, the paper's
learning-rate schedule against its formula, Adam's settings, the test digits binarized once from a recorded seed,
and a short run of the recipe that saves, reloads and resumes."""

import math
import os

import keras
import numpy as np
import pytest

import model
import train
from conftest import ROOT, interrupting_callback
from vae_kl.choices import architectures, learning_rates
from vae_kl.data import sources
from vae_kl.spec import config, plan
from vae_kl.training import machine

RECIPE = os.path.join(ROOT, "recipes", "burda2015_vae.yaml")


def dense(inputs, units):
    return inputs * units + units


def test_the_mlp_has_the_papers_layers_and_parameter_count():
    cfg = config.load(RECIPE)[0]
    vae = model.build_vae(cfg.model, cfg.loss, seed=0)
    # 784 -> 200 -> 200 -> (50 means, 50 log-variances); 50 -> 200 -> 200 -> 784 logits (Burda et al., section 5).
    assert vae.encoder.count_params() == dense(784, 200) + dense(200, 200) + 2 * dense(200, 50)
    assert vae.decoder.count_params() == dense(50, 200) + dense(200, 200) + dense(200, 784)
    activations = [layer.activation.__name__ for layer in vae.encoder.layers if isinstance(layer, keras.layers.Dense)]
    assert activations == ["tanh", "tanh", "linear", "linear"]
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype("float32")
    assert vae.decoder(vae.encoder(x)[2]).shape == (3, 28, 28, 1) and vae.latent_dim == 50


def papers_rate(step, steps_per_epoch, scale=1.0):
    """0.001·10^(-i/7) in stage i, which lasts 3^i·scale passes (i = 0..7), by counting passes."""
    passes, start = step / steps_per_epoch, 0.0
    for i in range(8):
        start += 3 ** i * scale
        if passes < start - 1e-12:
            return 0.001 * 10 ** (-i / 7)
    return 0.001 * 10 ** (-7 / 7)


@pytest.mark.parametrize("scale, steps_per_epoch", [(1.0, 3000), (0.1, 3000), (1.0, 7)])
def test_the_schedules_rate_follows_the_papers_formula_at_every_stage(scale, steps_per_epoch):
    train_cfg = config.from_dict({"train": {"lr_schedule": "burda2015", "lr_passes_scale": scale}}).train
    schedule = learning_rates.Burda2015.rate(train_cfg, steps_per_epoch)
    total = learning_rates.Burda2015.epochs(train_cfg) * steps_per_epoch
    assert learning_rates.Burda2015.epochs(train_cfg) == pytest.approx(3280 * scale)
    ends = np.cumsum([3 ** i * scale * steps_per_epoch for i in range(8)])
    steps = sorted({0, 1, *(int(round(e)) - 1 for e in ends[:-1]), *(int(round(e)) for e in ends[:-1]),
                    int(total) - 1, int(total) + 5})
    for step in steps:
        assert float(schedule(step)) == pytest.approx(papers_rate(step, steps_per_epoch, scale), rel=1e-6), step


def test_the_schedule_names_a_run_of_another_length_and_adam_its_settings():
    cfg = config.load(RECIPE, ["train.epochs=30"])[0]
    notes = " ".join(plan.Plan.from_config(cfg, (28, 28, 1), 600).notes)
    assert "Adam with β₁ 0.9, β₂ 0.999, ε 0.0001" in notes and "3280 passes in all" in notes
    assert "laid out for 3280 passes over the data but train.epochs is 30" in notes
    assert "lr_passes_scale: 0.009146" in notes  # 30 passes of the same eight stages.
    assert plan.Plan.from_config(config.Config(), (28, 28, 1), 600).notes == []  # The tutorial: nothing to say.
    with pytest.raises(config.ConfigError, match="train.lr_passes_scale is only read by train.lr_schedule burda2015"):
        config.from_dict({"train": {"lr_passes_scale": 0.5}})
    with pytest.raises(config.ConfigError, match="model.mlp_hidden_units is only read by model.architecture mlp"):
        config.from_dict({"model": {"mlp_hidden_units": 100}})


def test_the_optimizer_is_adam_with_the_settings_and_the_schedule():
    cfg = config.load(RECIPE, ["data.source=mnist_embedded"])[0]
    digits = sources.load_digits(cfg.data, cfg.train.seed)
    optimizer = machine.Setup(cfg, digits).optimizer()
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.999, 1e-4)
    assert isinstance(optimizer.learning_rate_schedule if hasattr(optimizer, "learning_rate_schedule")
                      else optimizer._learning_rate, keras.optimizers.schedules.PiecewiseConstantDecay)


def test_the_test_digits_are_binarized_once_from_their_recorded_seed(tmp_path):
    grey = np.random.default_rng(0).uniform(size=(20, 28, 28)).astype("float32")
    path = tmp_path / "grey.npz"
    np.savez(path, x_train=grey, y_train=np.zeros(20, "int64"), x_test=grey[:8], y_test=np.zeros(8, "int64"))

    def validation(seed, binarize_seed):
        data = config.from_dict({"data": {"source": "npz", "path": str(path), "binarize": "dynamic",
                                          "binarize_seed": binarize_seed}}).data
        return sources.load_digits(data, seed).x_val

    def drawn(seed):  # One uniform draw per pixel value from the seed's generator, as data's _binarize draws it.
        return (np.random.default_rng(seed).random((8, 28, 28, 1), dtype=np.float32) < grey[:8, ..., None])

    assert np.array_equal(validation(1, 123), drawn(123)) and set(np.unique(validation(1, 123))) == {0.0, 1.0}
    assert np.array_equal(validation(2, 123), validation(1, 123))  # Every run, whatever its seed: one test set.
    assert not np.array_equal(validation(1, 124), validation(1, 123))
    assert np.array_equal(validation(1, None), drawn(1 + 12345))  # null follows train.seed, as before the setting.
    with pytest.raises(config.ConfigError, match="data.binarize_seed is only read when data.binarize is static"):
        config.from_dict({"data": {"binarize_seed": 5}})


def test_a_short_run_of_the_recipe_trains_saves_reloads_and_resumes_mid_schedule(tmp_path):
    settings = ["model.latent_dim=5", "model.mlp_hidden_units=32", "train.epochs=2", "train.batch_size=60",
                "train.lr_passes_scale=0.0006098", "data.binarize_seed=7", "evaluation.iwae_k=5",
                "output.run_name=burda"]  # 3280·0.0006098 = 2 passes: all eight stages in two epochs.
    cfg = config.load(RECIPE, [*[f"{k}" for k in settings], "data.source=mnist_embedded", "data.limit=600",
                               f"output.dir={tmp_path}", "output.tensorboard=false", "train.batch_shards=1"])[0]
    status, run_dir = train.train(cfg, callbacks=[interrupting_callback(after=1)])
    assert status == 130
    summary = train.run(cfg)  # Resumes after epoch 1, the optimizer's step count (and so its rate) restored.
    assert summary["status"] == "complete" and summary["epochs_completed"] == 2
    assert summary["validation"]["iwae_k"] == 5 and summary["validation"]["examples"] == 1000
    vae = keras.saving.load_model(os.path.join(run_dir, "model.keras"), safe_mode=True)
    assert isinstance(vae.decoder.get_layer("logits"), keras.layers.Reshape)
    assert int(vae.optimizer.iterations) == 20  # 2 epochs of 10 steps: the resumed run did not start over.
    final = float(vae.optimizer.learning_rate)  # The schedule's rate at step 20: its last stage.
    assert final == pytest.approx(0.001 * 10 ** -1, rel=1e-6)
    assert math.isclose(learning_rates.Burda2015.epochs(cfg.train), 2.0, rel_tol=1e-3)
    assert architectures.FAMILY.get("mlp").summary


def test_the_comparison_table_gives_the_mean_and_standard_error_over_seeds():
    import argparse
    import sys

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import literature

    def summary(nll, seed):
        phases = {"gradient_steps": 3000.0, "validation": 400.0, "between_epochs": 200.0}
        validation = {"iwae_nll_nats": nll, "neg_elbo_nats": nll + 3, "kl_nats": 24.0, "active_units": 16,
                      "iwae_k": 5000, "examples": 10000}
        return {"validation": validation, "seed": seed,
                "timing": {"phases_seconds": phases, "digits_per_second": 6000.0}}

    nlls = [89.0, 90.0, 92.0]
    table = literature.results_table(argparse.Namespace(variant="short"),
                                     [summary(x, 1337 + i) for i, x in enumerate(nlls)])
    se = np.std(nlls, ddof=1) / math.sqrt(3)  # numpy's, beside the benchmark's statistics module.
    assert f"| {np.mean(nlls):.2f} ± {se:.2f} |" in table
    assert f"| {np.mean(nlls) - 86.76:.2f} ± {se:.2f} |" in table  # The gap keeps the spread of the NLL.
    assert "ours k = 5,000" in table and "1337, 1338, 1339" in table and "89.00; 90.00; 92.00" in table
    assert "| 1.00 ± 0.00 |" in table  # 3,600 s of training a seed.


def test_the_iwae_bound_at_the_papers_k_meets_log_p_x_by_quadrature():
    # With one latent unit, log p(x) = log ∫ p(x|z) N(z; 0, 1) dz is a 1-D integral: a fine grid gives it to
    # well under 0.01 nats. The IWAE bound at k = 5,000 is a lower bound in expectation and
    # must come within 0.05 nats.
    from vae_kl.evaluation import bounds, codes

    cfg = config.load(RECIPE, ["model.latent_dim=1"])[0]
    vae = model.build_vae(cfg.model, cfg.loss, seed=3)
    x = (np.random.default_rng(0).random((3, 28, 28, 1)) < 0.2).astype("float32")  # Three binary images.
    z_mean, z_log_var = codes.encode(vae, x)
    reconstruction, iwae, kl = bounds.importance_bounds(vae, x, z_mean, z_log_var, 5000, None, seed=5)
    grid = np.linspace(-10, 10, 4001)
    logits = codes.decode_logits(vae, grid[:, None].astype("float32")).astype("float64").reshape(len(grid), -1)
    flat = x.reshape(len(x), -1).astype("float64")
    # log p(x|z) of each image at each grid point, in numpy: Σ x·log σ(l) + (1 - x)·log(1 - σ(l)).
    log_px_z = -(flat[:, None, :] * np.logaddexp(0, -logits) + (1 - flat[:, None, :]) * np.logaddexp(0, logits)).sum(-1)
    log_joint = log_px_z - 0.5 * grid ** 2 - 0.5 * math.log(2 * math.pi)
    top = log_joint.max(axis=1, keepdims=True)
    log_px = (top[:, 0] + np.log(np.trapezoid(np.exp(log_joint - top), grid, axis=1)))
    np.testing.assert_allclose(iwae, log_px, atol=0.05)  # A single estimate may sit a little above: its noise.
    elbo = -(reconstruction + kl)  # The mean of the same 5,000 log-weights: below log p(x) by KL(q(z|x) ‖ p(z|x)).
    assert np.all(elbo < log_px - 0.05)
