"""The keras.io example's encoder and decoder, as functional models, and its sampling layer.

Layer for layer the tutorial's networks (for any image H×W×C with H and W divisible by 4; MNIST
keeps its exact parameter count), with one change: the decoder's last layer outputs logits, not
sigmoid probabilities, so the losses are computed stably (losses.py) and the likelihood
(likelihoods.py) turns them into the image it stands for.
"""

import keras
from keras import layers, ops

from vae_kl.choices.fast_layers import TapMatmulConv2DTranspose

IMAGE_SHAPE = (28, 28, 1)


def reparameterize(z_mean, z_log_var, epsilon):
    """z = μ + σ·ε, with σ = exp(½ log σ²). All (batch, latent_dim)."""
    return z_mean + ops.exp(0.5 * z_log_var) * epsilon


@keras.saving.register_keras_serializable(package="vae_kl")
class Sampling(layers.Layer):
    """Draws z = μ + σ·ε with ε ~ N(0, I), the reparameterisation trick."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs  # (batch, latent_dim) each
        return reparameterize(z_mean, z_log_var, self.draw(ops.shape(z_mean)))

    def draw(self, shape):
        """ε ~ N(0, I) of the given shape, from this layer's generator (advancing it)."""
        return keras.random.normal(shape, seed=self.seed_generator)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def build_encoder(latent_dim, seed=None, image_shape=IMAGE_SHAPE):
    """Image (batch, H, W, C) -> [z_mean, z_log_var, z], each (batch, latent_dim)."""
    inputs = keras.Input(shape=tuple(image_shape))
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(inputs)  # (batch, H/2, W/2, 32)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)  # (batch, H/4, W/4, 64)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling(seed=seed, name="z", dtype="float32")([z_mean, z_log_var])  # Noise in float32 under any policy.
    return keras.Model(inputs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(latent_dim, fast_layers=False, image_shape=IMAGE_SHAPE):
    """Latent code (batch, latent_dim) -> logits (batch, H, W, C).

    fast_layers computes the last layer with TapMatmulConv2DTranspose: the same
    function and weights, about 1.5x faster forward+backward on a CPU (docs/performance.md).
    """
    height, width, channels = image_shape
    inputs = keras.Input(shape=(latent_dim,))
    x = layers.Dense(height // 4 * width // 4 * 64, activation="relu")(inputs)
    x = layers.Reshape((height // 4, width // 4, 64))(x)
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)  # (batch, H/2, W/2, 64)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)  # (batch, H, W, 32)
    last = TapMatmulConv2DTranspose if fast_layers else layers.Conv2DTranspose
    logits = last(channels, 3, padding="same", name="logits")(x)  # (batch, H, W, C)
    return keras.Model(inputs, logits, name="decoder")

