"""The encoder and decoder, one class per architecture (model.architecture): the keras.io example's
convolutional networks, the default, layer for layer, and Burda et al. (2015)'s dense networks.

Each builds two functional models, as the keras.io file does: an encoder, images (batch, H, W, C) ->
[z_mean, z_log_var, z] with a Sampling layer named "z", and a decoder, z (batch, latent_dim) -> logits
(batch, H, W, C). The one change from the tutorial: the decoder's last layer outputs logits, not sigmoid
probabilities, so the losses are computed stably (losses.py) and the likelihood turns them into the image
it stands for. Like the other families, the classes carry their traits (name, settings) without loading
TensorFlow; the layers are made when a model is built. To add an architecture: a class here with
`@FAMILY.register`; model.architecture then accepts its name and the model section its settings.
"""

import math
from typing import Any, Literal, Optional

from vae_kl.choices import registry
from vae_kl.choices.registry import Setting

keras, layers = registry.Deferred("keras"), registry.Deferred("keras.layers")  # Keras only when a model is built.
sampling, fast_layers = registry.Deferred("vae_kl.choices.sampling"), registry.Deferred("vae_kl.choices.fast_layers")

FAMILY = registry.Family("model.architecture")
IMAGE_SHAPE = (28, 28, 1)

FAST_LAYERS = Setting.of("fast_layers", bool, True, "Compute the decoder's last layer with faster CPU arithmetic: "
                         "the same function and weights (docs/performance.md); false: plain Keras.")


class Architecture:
    """Base class: the traits of an encoder-decoder pair and the two builders.

    Args (the constructor's, from `options`): the settings in `settings`, by name.
    """

    name_in_config = None  # The config name (model.architecture).
    summary = ""  # A few words for help texts.
    settings = ()  # Model settings only this architecture reads (config refuses them with another).

    @classmethod
    def options(cls, model_cfg) -> dict:
        """Constructor arguments from the config's model section (the settings it reads)."""
        return {setting.name: getattr(model_cfg, setting.name) for setting in cls.settings}

    def __init__(self, **options):
        self.options = options

    def encoder(self, latent_dim: int, image_shape: tuple, seed=None):
        """The encoder as a functional keras.Model named "encoder"."""
        raise NotImplementedError

    def decoder(self, latent_dim: int, image_shape: tuple):
        """The decoder as a functional keras.Model named "decoder", ending in logits."""
        raise NotImplementedError


def encoder_head(x: "keras.KerasTensor", inputs: "keras.KerasTensor", latent_dim: int,
                 seed: Optional[int]) -> "keras.Model":
    """The encoder's end, from its features x: z_mean and z_log_var (batch, latent_dim) and the Sampling layer."""
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = sampling.Sampling(seed=seed, name="z", dtype="float32")([z_mean, z_log_var])  # Noise in float32 always.
    return keras.Model(inputs, [z_mean, z_log_var, z], name="encoder")


@FAMILY.register
class Conv(Architecture):
    """The keras.io example's networks, for any H×W×C with H and W divisible by 4 (MNIST keeps the tutorial's
    exact parameter count): two stride-2 convolutions and a Dense layer of 16 up, their mirror image down."""

    name_in_config, summary, settings = "conv", "the keras.io tutorial's convolutional networks", (FAST_LAYERS,)

    def encoder(self, latent_dim, image_shape=IMAGE_SHAPE, seed=None):
        inputs = keras.Input(shape=tuple(image_shape))
        x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(inputs)  # (batch, H/2, W/2, 32)
        x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)  # (batch, H/4, W/4, 64)
        x = layers.Flatten()(x)
        x = layers.Dense(16, activation="relu")(x)
        return encoder_head(x, inputs, latent_dim, seed)

    def decoder(self, latent_dim, image_shape=IMAGE_SHAPE):
        """fast_layers computes the last layer with TapMatmulConv2DTranspose: the same function and weights,
        about 1.5x faster forward+backward on a CPU (docs/performance.md)."""
        height, width, channels = image_shape
        inputs = keras.Input(shape=(latent_dim,))
        x = layers.Dense(height // 4 * width // 4 * 64, activation="relu")(inputs)
        x = layers.Reshape((height // 4, width // 4, 64))(x)
        x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)  # (batch, H/2, W/2, 64)
        x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)  # (batch, H, W, 32)
        last = fast_layers.TapMatmulConv2DTranspose if self.options.get("fast_layers") else layers.Conv2DTranspose
        logits = last(channels, 3, padding="same", name="logits")(x)  # (batch, H, W, C)
        return keras.Model(inputs, logits, name="decoder")


UNITS = Setting.of("mlp_hidden_units", int, 200, "Units of each deterministic (dense) layer.", ge=1, le=8192)
LAYERS = Setting.of("mlp_hidden_layers", int, 2, "Deterministic layers in the encoder, and as many in the decoder.",
                    ge=1, le=16)
ACTIVATION = Setting.of("mlp_activation", Literal["tanh", "relu", "softplus", "elu"], "tanh",
                        "The deterministic layers' nonlinearity: tanh | relu | softplus | elu.")


@FAMILY.register
class MLP(Architecture):
    """Burda, Grosse & Salakhutdinov (2015)'s VAE with one stochastic layer: the flattened image through
    mlp_hidden_layers dense layers of mlp_hidden_units to z, and the mirror image back to one logit per pixel
    value (their MNIST models: two layers of 200 tanh units, 50 latent units). Glorot-uniform weights, Keras's
    default, are the initialisation the paper names (Glorot & Bengio 2010)."""

    name_in_config, summary = "mlp", "dense layers, Burda et al. 2015's VAE"
    settings = (UNITS, LAYERS, ACTIVATION)

    def hidden(self, x):
        for _ in range(self.options["mlp_hidden_layers"]):
            x = layers.Dense(self.options["mlp_hidden_units"], activation=self.options["mlp_activation"])(x)
        return x

    def encoder(self, latent_dim, image_shape=IMAGE_SHAPE, seed=None):
        inputs = keras.Input(shape=tuple(image_shape))
        return encoder_head(self.hidden(layers.Flatten()(inputs)), inputs, latent_dim, seed)

    def decoder(self, latent_dim, image_shape=IMAGE_SHAPE):
        inputs = keras.Input(shape=(latent_dim,))
        flat = layers.Dense(math.prod(image_shape))(self.hidden(inputs))  # (batch, H·W·C) logits
        return keras.Model(inputs, layers.Reshape(tuple(image_shape), name="logits")(flat), name="decoder")


def build(model_cfg: Any, image_shape: tuple = IMAGE_SHAPE, seed: Optional[int] = None) -> tuple:
    """(encoder, decoder) of the architecture a config's model section names, for images of image_shape."""
    cls = FAMILY.get(model_cfg.architecture)
    chosen = cls(**cls.options(model_cfg))
    return chosen.encoder(model_cfg.latent_dim, image_shape, seed), chosen.decoder(model_cfg.latent_dim, image_shape)
