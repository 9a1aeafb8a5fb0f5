"""Fast layers compute the plain Keras layers' function with the same weights, and survive save/load."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import model
import train
from conftest import build_vae
from vae_kl.choices import fast_layers
from vae_kl.training import machine

RNG = np.random.default_rng(3)


def random(*shape):
    return tf.constant(RNG.standard_normal(shape).astype("float32"))


def forward_and_gradients(layer, x, cotangent):
    """Output, d/dx and d/dweights of sum(layer(x) · cotangent)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * cotangent)
    return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]


@pytest.mark.parametrize("filters, kernel, activation, shape", [
    (1, 3, None, (8, 28, 28, 32)),  # The decoder's last layer.
    (2, 5, "relu", (3, 9, 11, 4)),
    (3, 1, "sigmoid", (2, 5, 6, 3)),
])
def test_tap_matmul_layer_equals_conv2d_transpose_in_output_and_gradients(filters, kernel, activation, shape):
    plain = keras.layers.Conv2DTranspose(filters, kernel, padding="same", activation=activation)
    fast = fast_layers.TapMatmulConv2DTranspose(filters, kernel, padding="same", activation=activation)
    plain.build(shape)
    fast.build(shape)
    plain.bias.assign(RNG.standard_normal(filters).astype("float32"))
    fast.set_weights(plain.get_weights())  # Same names, shapes and order: the plain weights load as they are.
    assert [w.shape for w in fast.weights] == [w.shape for w in plain.weights]
    x, cotangent = random(*shape), random(*shape[:3], filters)
    for got, want in zip(forward_and_gradients(fast, x, cotangent), forward_and_gradients(plain, x, cotangent)):
        scale = float(tf.reduce_max(tf.abs(want))) + 1e-6
        np.testing.assert_allclose(np.asarray(got) / scale, np.asarray(want) / scale, rtol=0, atol=1e-5)


def test_tap_matmul_layer_accepts_an_unknown_batch_size_and_refuses_what_it_cannot_compute():
    inputs = keras.Input(shape=(6, 6, 4))
    layer = fast_layers.TapMatmulConv2DTranspose(1, 3)
    functional = keras.Model(inputs, layer(inputs))
    assert functional(random(5, 6, 6, 4)).shape == (5, 6, 6, 1)
    unknown_size = tf.function(fast_layers.tap_conv_transpose,
                               input_signature=[tf.TensorSpec((None, None, None, 4)), tf.TensorSpec((3, 3, 1, 4))])
    with pytest.raises(ValueError, match="height and width"):  # Its shifts are laid out for one image size.
        unknown_size.get_concrete_function()
    with pytest.raises(ValueError, match="strides=1"):
        fast_layers.TapMatmulConv2DTranspose(1, 3, strides=2)
    with pytest.raises(ValueError, match="odd kernel"):
        fast_layers.TapMatmulConv2DTranspose(1, 4)


def test_fast_vae_has_the_plain_vaes_parameters_and_computes_its_function():
    plain, fast = build_vae(seed=1, model__fast_layers=False), build_vae(seed=1, model__fast_layers=True)
    assert isinstance(fast.decoder.get_layer("logits"), fast_layers.TapMatmulConv2DTranspose)
    assert fast.count_params() == plain.count_params() == 69076 + 65089 + 5  # + GECO's five scalars (model.VAE)
    assert [w.shape for w in fast.weights] == [w.shape for w in plain.weights]
    fast.set_weights(plain.get_weights())
    z = random(16, 2)
    np.testing.assert_allclose(np.asarray(fast.decoder(z)), np.asarray(plain.decoder(z)), atol=1e-5)


# Saving the fast and the plain layer and loading them in a fresh process (safe mode), with the same outputs
# and each its own layer class: the first (fast) and last (plain) cases of tests/test_model.py's
# test_model_keras_reloads_in_a_fresh_process_with_equal_outputs_and_objective, in the process it starts anyway.


def test_a_config_saved_before_fast_layers_existed_rebuilds_the_plain_layers():
    version_1 = {"name": "vae", "trainable": True, "latent_dim": 2, "likelihood": "bernoulli", "seed": 0}
    rebuilt = model.VAE.from_config(version_1)
    assert type(rebuilt.decoder.get_layer("logits")) is keras.layers.Conv2DTranspose


def test_steps_per_execution_divides_the_epoch_so_epochs_keep_their_batches():
    from vae_kl.data import batches, sources
    from vae_kl.spec import config

    x = RNG.uniform(size=(39 * 8, 28, 28, 1)).astype("float32")
    digits = sources.Digits(x_train=x, y_train=np.zeros(len(x), "int64"), x_val=x[:8], y_val=np.zeros(8, "int64"),
                         name="test")
    cfg, _ = config.load(None, ["train.batch_size=8", "train.steps_per_execution=32"])
    vae = train.build_vae(machine.Setup(cfg, digits))
    assert vae.steps_per_execution == 13  # The largest divisor of 39 steps up to 32.
    vae.fit(batches.train_batches(x, 8, 0, 0, 2), epochs=1, steps_per_epoch=39, verbose=0)
    assert int(vae.optimizer.iterations) == 39
