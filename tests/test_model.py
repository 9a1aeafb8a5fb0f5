"""The network: the tutorial's shapes and sizes, its train/test steps, seeding, and save/load."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import model
from conftest import ROOT, build_vae, reseed, step_terms
from vae_kl.choices import priors, sampling
from vae_kl.evaluation import codes
from vae_kl.parts import trackers

RNG = np.random.default_rng(1)


def images(n=16):
    return RNG.uniform(size=(n, 28, 28, 1)).astype("float32")


def conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def test_parameter_counts_equal_the_tutorials():
    encoder_expected = (conv_params(3, 1, 32) + conv_params(3, 32, 64) + (7 * 7 * 64 * 16 + 16) + 2 * (16 * 2 + 2))
    decoder_expected = ((2 * 7 * 7 * 64 + 7 * 7 * 64) + conv_params(3, 64, 64) + conv_params(3, 64, 32)
                        + conv_params(3, 32, 1))
    vae = build_vae()
    assert vae.encoder.count_params() == encoder_expected == 69076
    assert vae.decoder.count_params() == decoder_expected == 65089
    trainable = sum(int(np.prod(w.shape)) for w in vae.trainable_weights)
    assert trainable == encoder_expected + decoder_expected  # The standard normal prior has no weights.
    assert vae.count_params() == trainable + 5  # And GECO's state: five scalars, not trained (vae_kl/parts/geco.py).


def test_the_architecture_follows_any_image_size_divisible_by_four():
    vae = build_vae(image_shape=(32, 32, 3), model__latent_dim=4)
    x = RNG.uniform(size=(2, 32, 32, 3)).astype("float32")
    assert vae.decoder(vae.encoder(x)[0]).shape == (2, 32, 32, 3)
    assert vae.num_pixels == 32 * 32 * 3
    assert vae.encoder.count_params() == (conv_params(3, 3, 32) + conv_params(3, 32, 64) + (8 * 8 * 64 * 16 + 16)
                                          + 2 * (16 * 4 + 4))


def test_shapes():
    vae = build_vae(model__latent_dim=3)
    z_mean, z_log_var, z = vae.encoder(images(4))
    assert z_mean.shape == z_log_var.shape == z.shape == (4, 3)
    assert vae.decoder(z).shape == (4, 28, 28, 1)
    out = np.asarray(vae(images(4)))
    assert out.shape == (4, 28, 28, 1) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("shards", [1, 3])
def test_reconstruct_gives_what_predict_gives(shards):
    vae = build_vae()
    vae.batch_shards = shards
    x = images(10)
    np.testing.assert_allclose(codes.reconstruct(vae, x), vae.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_sampling_is_seeded_and_reseeding_repeats_an_epochs_noise():
    layer = sampling.Sampling(seed=7)
    mu, log_var = np.zeros((5, 2), "float32"), np.zeros((5, 2), "float32")
    first, second = np.asarray(layer([mu, log_var])), np.asarray(layer([mu, log_var]))
    assert not np.allclose(first, second)  # The generator advances: fresh noise each call.
    assert np.allclose(first, np.asarray(sampling.Sampling(seed=7)([mu, log_var])))
    vae, x = build_vae(seed=3), images(2)
    draws = []
    for epoch in (4, 4, 5):
        reseed(vae, epoch)
        draws.append(np.asarray(vae.encoder(x)[2]))
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.allclose(draws[0], draws[2])


compiled = build_vae


def test_train_and_test_steps_report_the_same_trackers():
    vae = compiled()
    x = images(64)
    history = vae.fit(x, epochs=1, batch_size=16, verbose=0, validation_data=(x,))
    keys = {"loss", "reconstruction", "kl", "neg_elbo"}
    assert keys | {f"val_{k}" for k in keys} <= set(history.history)
    result = vae.evaluate(x, batch_size=16, verbose=0, return_dict=True)
    assert set(result) == keys
    assert math.isclose(result["neg_elbo"], result["reconstruction"] + result["kl"], rel_tol=1e-5)
    assert math.isclose(result["loss"], result["neg_elbo"], rel_tol=1e-5)  # β = 1: the objective is -ELBO.


def test_weighted_means_equal_a_numpy_weighted_average_and_reset():
    tracker = trackers.WeightedMeans(["a", "b"])
    batches = [(np.array([1.0, 10.0]), 128), (np.array([4.0, -2.0]), 32)]  # a short last batch
    for values, size in batches:
        tracker.update_state(values, size)
    values, sizes = np.array([v for v, _ in batches]), np.array([s for _, s in batches])
    expected = (values * sizes[:, None]).sum(axis=0) / sizes.sum()
    result = tracker.result()
    assert list(result) == ["a", "b"]
    np.testing.assert_allclose([float(result["a"]), float(result["b"])], expected, rtol=1e-6)
    tracker.reset_state()
    assert float(tracker.result()["a"]) == 0.0


def test_evaluate_weights_a_short_last_batch_by_its_size():
    # The KL depends on z_mean and z_log_var only (no sampling noise), so batches can be recomputed.
    vae, x = compiled(), images(20)
    first, last = step_terms(vae, x[:16]), step_terms(vae, x[16:])
    expected = (16 * float(first["kl"]) + 4 * float(last["kl"])) / 20  # per digit, not (a + b) / 2
    split = vae.evaluate(x, batch_size=16, verbose=0, return_dict=True)
    whole = vae.evaluate(x, batch_size=20, verbose=0, return_dict=True)
    assert not math.isclose(float(first["kl"]), float(last["kl"]), rel_tol=1e-3)
    assert math.isclose(split["kl"], expected, rel_tol=1e-5)
    assert math.isclose(split["kl"], whole["kl"], rel_tol=1e-5)


def test_mean_reduction_objective_is_the_elbo_terms_rescaled():
    vae = compiled(loss__reconstruction_reduction="mean", loss__kl_weight=0.5)
    result = vae.evaluate(images(32), batch_size=8, verbose=0, return_dict=True)
    assert math.isclose(result["loss"], result["reconstruction"] / 784 + 0.5 * result["kl"], rel_tol=1e-5)


def test_training_reduces_the_objective():
    vae = compiled()
    x = (images(256) > 0.7).astype("float32")
    history = vae.fit(x, epochs=3, batch_size=32, verbose=0).history["loss"]
    assert history[-1] < history[0]


def test_learned_sigma_is_a_trainable_weight_and_is_reported():
    vae = compiled(loss__likelihood="gaussian", loss__gaussian_sigma="learned")
    assert any("log_sigma" in w.path for w in vae.trainable_weights)
    result = vae.evaluate(images(16), verbose=0, return_dict=True)
    assert math.isclose(result["sigma"], 1.0, rel_tol=1e-6)  # exp(0) before training.


def test_free_bits_leave_the_reported_kl_true():
    plain, floored = compiled(), compiled(loss__free_bits=5.0)
    floored.set_weights(plain.get_weights())
    x = images(16)
    for vae in (plain, floored):
        reseed(vae, 0)
    a = plain.evaluate(x, batch_size=16, verbose=0, return_dict=True)
    b = floored.evaluate(x, batch_size=16, verbose=0, return_dict=True)
    assert math.isclose(a["kl"], b["kl"], rel_tol=1e-5)
    assert b["loss"] > a["loss"]  # The floor raises the objective, not the reported KL.


@pytest.mark.parametrize("batch, shards", [(37, 2), (37, 3), (2, 3)])
def test_sharded_batches_give_the_unsharded_loss_and_gradients(batch, shards):
    # Free bits and the batch-optimal σ are functions of the whole batch: the loss must still be
    # computed on the whole batch. A batch smaller than the shard count exercises the padding.
    import tensorflow as tf

    keras.utils.set_random_seed(batch + shards)  # The same weights on every run: no draw-dependent tolerance.
    x = images(batch)
    results = []
    for count in (1, shards):
        vae = compiled(batch_shards=count, loss__free_bits=0.5, loss__likelihood="gaussian",
                       loss__gaussian_sigma="optimal")
        if count == 1:
            weights = vae.get_weights()
        vae.set_weights(weights)
        reseed(vae, 0)
        with tf.GradientTape() as tape:
            terms = step_terms(vae, x, training=True)
        results.append((terms, tape.gradient(terms["loss"], vae.trainable_weights)))
    (plain, plain_grads), (sharded, sharded_grads) = results
    reseed(vae, 0)  # The noise the sliced step draws for the whole batch is the noise the encoder draws itself.
    drawn_by_encoder = np.asarray(vae.encoder(x)[2])
    reseed(vae, 0)
    z_mean, z_log_var = vae.encode(x)
    drawn_whole = sampling.reparameterize(z_mean, z_log_var, vae.encoder.get_layer("z").draw((batch, 2)))
    np.testing.assert_allclose(np.asarray(drawn_whole), drawn_by_encoder, rtol=1e-5, atol=1e-6)
    for name in ("loss", "reconstruction", "kl"):
        np.testing.assert_allclose(float(sharded[name]), float(plain[name]), rtol=1e-5)
    for a, b in zip(plain_grads, sharded_grads):
        # float32 sums over the slices in another order: a gradient element that is a near-cancelling sum over
        # 37 digits × 196 positions can move by 1e-3 of the largest one; a slicing error would move all by O(1).
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=2e-3 * float(np.abs(a).max()))


def test_config_round_trip():
    vae = compiled(model__latent_dim=4, model__prior="mixture", model__prior_components=3,
                   loss__likelihood="gaussian", loss__gaussian_sigma=0.3)
    clone = model.VAE.from_config(vae.get_config())
    assert clone.get_config() == vae.get_config()
    assert isinstance(clone.prior, priors.Mixture) and clone.prior.components == 3
    assert clone.likelihood.sigma == 0.3


RELOAD_CASES = [{}, {"loss__likelihood": "gaussian", "loss__gaussian_sigma": "learned"},
                {"loss__likelihood": "continuous_bernoulli", "model__latent_dim": 3},
                {"model__prior": "normal", "model__prior_scale": 2.0},
                {"model__prior": "mixture", "model__prior_components": 4},
                {"model__prior": "vamp", "model__prior_components": 3, "loss__reconstruction_reduction": "mean",
                 "loss__kl_schedule": "cyclical"},
                {"model__fast_layers": False}]  # The plain Keras last layer; every other case has the fast one.

# Loads each model.keras in safe mode and writes what a reloaded model computes. One process for all
# cases (the fast and the plain last layer included, for tests/test_fast_layers.py): starting TensorFlow
# is most of the cost.
RELOAD_SCRIPT = """
import dataclasses, json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import keras, model
x = np.load(sys.argv[2])
for path in sys.argv[3:]:
    vae = keras.saving.load_model(path, safe_mode=True)
    encode = vae.encode
    z = vae.prior.sample(4, 0, encode)
    np.savez(path + ".npz", recon=np.asarray(vae(x)), log_p=np.asarray(vae.prior.log_prob(z, encode)))
    print(json.dumps([vae.likelihood.describe(), vae.prior.describe(), dataclasses.asdict(vae.objective),
                      type(vae.decoder.get_layer("logits")).__name__]))
"""


def test_model_keras_reloads_in_a_fresh_process_with_equal_outputs_and_objective(tmp_path):
    x, models, paths = images(8), [], []
    np.save(tmp_path / "x.npy", x)
    for i, settings in enumerate(RELOAD_CASES):
        vae = compiled(**settings)
        if i == 0:  # A trained model, its optimizer's state in the file too.
            vae.fit(x, epochs=1, batch_size=8, verbose=0)
        else:  # Move the weights (and a learned prior) off their start; a fit per case costs seconds of tracing.
            vae(x)
            vae.prior.log_prob(vae.prior.sample(4, 0, vae.encode), vae.encode)  # Built.
            for weight in vae.trainable_weights:
                weight.assign(weight + RNG.normal(0, 0.05, weight.shape).astype(weight.dtype))
        paths.append(str(tmp_path / f"model_{i}.keras"))
        vae.save(paths[-1])
        models.append(vae)
    result = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, ROOT, str(tmp_path / "x.npy"), *paths],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    described = [json.loads(line) for line in result.stdout.strip().splitlines()[-len(paths):]]
    assert [layer for *_, layer in described] == ["TapMatmulConv2DTranspose"] * (len(paths) - 1) + ["Conv2DTranspose"]
    for vae, path, (likelihood, prior, objective_, layer) in zip(models, paths, described):
        assert layer == type(vae.decoder.get_layer("logits")).__name__  # Each reloads the class it was saved with.
        assert likelihood == vae.likelihood.describe() and prior == vae.prior.describe()
        assert objective_ == dataclasses.asdict(vae.objective)  # The training objective travels in the compile config.
        out = np.load(path + ".npz")
        np.testing.assert_allclose(out["recon"], np.asarray(vae(x)), atol=1e-6)
        z = vae.prior.sample(4, 0, vae.encode)
        np.testing.assert_allclose(out["log_p"], np.asarray(vae.prior.log_prob(z, vae.encode)), rtol=1e-5)


@pytest.mark.parametrize("name", ["v1_bernoulli", "v1_gaussian_learned", "v5_mlp_gaussian_mixture", "v5_conv_geco"])
def test_a_model_saved_by_an_earlier_version_loads_with_identical_outputs(name):
    # tests/fixtures/v1_*.keras were saved by the VAE of 16 constructor arguments, before the four-part design;
    # v5_*.keras (after 3 steps) by the version that moved the machinery into vae_kl/: an MLP with a learned-σ
    # Gaussian and a 2-component mixture prior, and a GECO run's convolutional VAE.
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    reference = np.load(os.path.join(fixtures, f"{name[:2]}_reference.npz"))
    vae = keras.saving.load_model(os.path.join(fixtures, f"{name}.keras"), safe_mode=True)
    z_mean, z_log_var = (np.asarray(t) for t in vae.encoder_moments(reference["x"]))
    # To float32 rounding, not bit for bit: oneDNN's kernels differ between CPUs (the fixtures' machine and
    # this one give outputs 3e-8 apart), while a weight restored wrongly would be off by far more.
    for got, key in ((z_mean, "z_mean"), (z_log_var, "z_log_var"), (np.asarray(vae(reference["x"])), "recon")):
        np.testing.assert_allclose(got, reference[f"{name}_{key}"], rtol=1e-5, atol=1e-6)
    if name.startswith("v1_"):
        assert isinstance(vae.prior, priors.StandardNormal)
    if name == "v1_gaussian_learned":
        assert math.isclose(float(vae.likelihood.learned_log_sigma), -1.3, rel_tol=1e-6)  # Moved from the VAE.
        assert vae.terms_tracker.names[-1] == "sigma"
    if name == "v5_conv_geco":
        assert vae.objective.chooses_beta and vae.objective.target_distortion == 150.0
        assert float(vae.geco.log_multiplier) == pytest.approx(float(reference[f"{name}_log_multiplier"]), rel=1e-6)
    if name == "v5_mlp_gaussian_mixture":
        assert isinstance(vae.prior, priors.Mixture) and vae.prior.components == 2 and vae.latent_dim == 3
        assert vae.likelihood.sigma == "learned"


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_computes_the_networks_in_16_bits_and_the_objective_in_float32(precision):
    from vae_kl.spec import config

    cfg = config.from_dict({"loss": {"likelihood": "gaussian", "gaussian_sigma": "learned"}})
    mixed = model.build_vae(cfg.model, cfg.loss, 0, precision=precision)
    plain = model.build_vae(cfg.model, cfg.loss, 0)
    assert mixed.decoder.get_layer("logits").compute_dtype == precision.split("_")[1]
    assert mixed.encoder.get_layer("z").compute_dtype == "float32"  # The sampling noise stays float32.
    assert all(w.dtype == "float32" for w in mixed.weights)
    plain.set_weights(mixed.get_weights())
    x = images(16)
    for vae in (mixed, plain):
        vae.compile(optimizer="adam")
        reseed(vae, 0)
    terms_mixed, terms_plain = step_terms(mixed, x), step_terms(plain, x)
    assert all(t.dtype == "float32" for t in terms_mixed.values())
    assert float(terms_mixed["neg_elbo"]) == pytest.approx(float(terms_plain["neg_elbo"]), rel=1e-3)
    # 16-bit arithmetic rounds to 3 (bfloat16) or 4 (float16) significant digits: the logits agree to that.
    z = plain.encoder_moments(x)[0]
    logits_mixed, logits_plain = (np.asarray(v.decoder(z), dtype="float64") for v in (mixed, plain))
    error = np.abs(logits_mixed - logits_plain).max() / np.abs(logits_plain).max()
    assert 1e-6 < error < 3e-2
