"""The reparameterisation trick as the encoder's last layer: z = μ + σ·ε, ε ~ N(0, I) from a seeded generator."""

from typing import Any

import keras
import numpy as np
from keras import layers, ops


def reparameterize(z_mean: Any, z_log_var: Any, epsilon: Any) -> Any:
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

    def reseed(self, epoch):
        """Make this epoch's noise a function of (seed, epoch) only, so a resumed run draws the same."""
        state = self.seed_generator.state
        state.assign(np.array([(self.seed or 0) + 1, 1_000_003 * (epoch + 1)], dtype=state.dtype))

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
