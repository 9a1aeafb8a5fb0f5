"""Priors p(z): one small Keras layer per distribution over the latent code.

A prior gives the KL term of the objective, log p(z) for the IWAE bound, and samples for
samples.png. The KL is in closed form per latent dimension where one exists (the Gaussian
priors: shape (batch, latent_dim)); otherwise it is the one-sample Monte Carlo estimate
log q(z|x) - log p(z) at the same z the decoder sees (shape (batch, 1)). Priors with
parameters (mixture, vamp) learn them with the rest of the model and are saved in model.keras.

To add a prior: write its class here with its traits and `@FAMILY.register`, and test it in
tests/test_priors.py; model.prior then accepts its name (registry.py: how a plain class becomes a
Keras layer without loading TensorFlow at import).
"""

import math
from typing import Any

import numpy as np

from vae_kl.choices import registry
from vae_kl.choices.registry import Setting

# Keras only when the math runs.
keras, ops, losses = registry.Deferred("keras"), registry.Deferred("keras.ops"), registry.Deferred("losses")

FAMILY = registry.Family("model.prior", layers=True)

# Bounded on both sides: the closed-form KL multiplies μ² by 1/s², which overflows for tiny s.
SCALE = Setting.of("prior_scale", float, 1.0, "s of N(0, s²I): a reparametrisation of z, not a regulariser "
                   "(docs/kl_weighting.md).", ge=1e-3, le=1000)
COMPONENTS = Setting.of("prior_components", int, 10, "Gaussians K of the mixture, or pseudo-inputs of the VampPrior.",
                        ge=1, le=500)


def diagonal_normal_log_prob(z: Any, mean: Any, log_var: Any) -> Any:
    """log N(z; μ, diag σ²) summed over the last axis; z, mean and log_var broadcast. (...,)"""
    return ops.sum(losses.gaussian_log_density(z, mean, log_var), axis=-1)


def log_mean_exp(values: Any, axis: int) -> Any:
    """log (1/K) Σ_k exp(values_k) along axis, stably."""
    return ops.logsumexp(values, axis=axis) - math.log(values.shape[axis])


class Prior:
    """Base class. `encode` (images -> (z_mean, z_log_var)) is passed to every method for the
    VampPrior, whose density is the encoder's posterior at learned pseudo-inputs; others ignore it."""

    family, __new__ = FAMILY, registry.new_layer
    name_in_config = None  # The config name (model.prior); `name` is Keras's layer name.
    summary = ""  # A few words for help texts.
    closed_form_kl = False  # Whether kl is exact; else the one-sample estimate below.
    kl_per_dimension = False  # Whether kl is (batch, latent_dim), which free bits need, or (batch, 1).
    settings = ()  # Model settings only this prior reads (config refuses them with another prior).

    @classmethod
    def options(cls, model_cfg, image_shape):
        """Constructor arguments besides latent_dim, from the config's model section and the image shape."""
        return {}

    def __init__(self, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)

    def log_prob(self, z, encode=None):
        """log p(z) for codes z (batch, latent_dim); returns (batch,)."""
        raise NotImplementedError

    def kl(self, z_mean, z_log_var, z, encode=None):
        """KL(q(z|x) || p(z)) per example: (batch, latent_dim) in closed form, else (batch, 1) estimated
        by log q(z|x) - log p(z) at the sample z (unbiased; its mean over a batch is the KL's)."""
        log_q = diagonal_normal_log_prob(z, z_mean, z_log_var)
        return ops.expand_dims(log_q - self.log_prob(z, encode), -1)

    def sample(self, n, seed, encode=None):
        """n codes drawn from the prior, as a float32 numpy array (n, latent_dim)."""
        raise NotImplementedError

    def describe(self):
        """What summary.json records: the prior's name, settings and how its KL is computed."""
        return {"name": self.name_in_config, "kl": "closed form" if self.closed_form_kl else
                "Monte Carlo (one sample: log q(z|x) - log p(z))"}

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim}


@FAMILY.register
class Normal(Prior):
    """N(0, s²I). Rescaling z by s maps it onto N(0, I) with the same KL, so with a learnable
    encoder and decoder its scale is a reparametrisation, not a regulariser (docs/kl_weighting.md)."""

    name_in_config, summary, closed_form_kl, kl_per_dimension = "normal", "N(0, s²I)", True, True
    settings = (SCALE,)

    @classmethod
    def options(cls, model_cfg, image_shape):
        return {"scale": model_cfg.prior_scale}

    def __init__(self, latent_dim, scale=1.0, **kwargs):
        super().__init__(latent_dim, **kwargs)
        self.scale = float(scale)
        # A Python float, so that s = 1 computes exactly what the standard normal does.
        self.log_var = 2.0 * math.log(self.scale)

    def log_prob(self, z, encode=None):
        return diagonal_normal_log_prob(z, 0.0, self.log_var)

    def kl(self, z_mean, z_log_var, z, encode=None):
        return losses.gaussian_kl(z_mean, z_log_var, self.log_var)

    def sample(self, n, seed, encode=None):
        rng = np.random.default_rng(seed)
        return (self.scale * rng.standard_normal((n, self.latent_dim))).astype("float32")

    def describe(self):
        return {**super().describe(), "scale": self.scale}

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@FAMILY.register
class StandardNormal(Normal):
    """N(0, I): the tutorial's prior."""

    name_in_config, summary, settings = "standard_normal", "the tutorial's N(0, I)", ()

    @classmethod
    def options(cls, model_cfg, image_shape):
        return {}

    def __init__(self, latent_dim, **kwargs):
        kwargs.pop("scale", None)
        super().__init__(latent_dim, scale=1.0, **kwargs)

    def describe(self):
        return Prior.describe(self)

    def get_config(self):
        return Prior.get_config(self)


@FAMILY.register
class Mixture(Prior):
    """A learnable mixture of K diagonal Gaussians: p(z) = Σ_k π_k N(z; m_k, diag s_k²)."""

    name_in_config, summary, settings = "mixture", "learned Gaussians", (COMPONENTS,)

    @classmethod
    def options(cls, model_cfg, image_shape):
        return {"components": model_cfg.prior_components}

    def __init__(self, latent_dim, components=10, **kwargs):
        super().__init__(latent_dim, **kwargs)
        self.components = int(components)
        shape = (self.components, self.latent_dim)
        self.means = self.add_weight(shape=shape, initializer=keras.initializers.RandomNormal(stddev=1.0),
                                     name="means")
        self.log_vars = self.add_weight(shape=shape, initializer="zeros", name="log_vars")
        self.logits = self.add_weight(shape=(self.components,), initializer="zeros", name="logits")

    def log_prob(self, z, encode=None):
        per_component = diagonal_normal_log_prob(z[:, None, :], self.means[None], self.log_vars[None])  # (b, K)
        return ops.logsumexp(per_component + ops.log_softmax(self.logits)[None], axis=1)

    def sample(self, n, seed, encode=None):
        rng = np.random.default_rng(seed)
        logits = np.asarray(self.logits, dtype="float64")  # The softmax in numpy: Keras's warns when K = 1.
        weights = np.exp(logits - logits.max())
        k = rng.choice(self.components, size=n, p=weights / weights.sum())
        means, log_vars = np.asarray(self.means)[k], np.asarray(self.log_vars)[k]
        return (means + np.exp(0.5 * log_vars) * rng.standard_normal(means.shape)).astype("float32")

    def describe(self):
        return {**super().describe(), "components": self.components}

    def get_config(self):
        return {**super().get_config(), "components": self.components}


@FAMILY.register
class Vamp(Prior):
    """The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) Σ_k q(z|u_k) at K learned pseudo-inputs u_k.

    The pseudo-inputs are images sigmoid(a_k) with learned a_k (batch of K, image_shape), started as
    random grey-level images near the mean brightness of MNIST.
    """

    name_in_config, summary, settings = "vamp", "the VampPrior", (COMPONENTS,)

    @classmethod
    def options(cls, model_cfg, image_shape):
        return {"components": model_cfg.prior_components, "image_shape": image_shape}

    def __init__(self, latent_dim, components=10, image_shape=(28, 28, 1), **kwargs):
        super().__init__(latent_dim, **kwargs)
        self.components = int(components)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.pseudo_logits = self.add_weight(
            shape=(self.components, *self.image_shape),
            initializer=keras.initializers.RandomNormal(mean=-2.0, stddev=1.0), name="pseudo_inputs")

    def pseudo_inputs(self):
        """The K pseudo-inputs as images in [0, 1], (K, *image_shape)."""
        return ops.sigmoid(self.pseudo_logits)

    def _moments(self, encode):
        if encode is None:
            raise ValueError("The VampPrior needs the encoder: pass encode=(images -> z_mean, z_log_var).")
        return encode(self.pseudo_inputs())  # (K, latent_dim) each

    def log_prob(self, z, encode=None):
        means, log_vars = self._moments(encode)
        per_component = diagonal_normal_log_prob(z[:, None, :], means[None], log_vars[None])  # (b, K)
        return log_mean_exp(per_component, axis=1)

    def sample(self, n, seed, encode=None):
        rng = np.random.default_rng(seed)
        means, log_vars = (np.asarray(t) for t in self._moments(encode))
        k = rng.integers(self.components, size=n)
        return (means[k] + np.exp(0.5 * log_vars[k]) * rng.standard_normal((n, self.latent_dim))).astype("float32")

    def describe(self):
        return {**super().describe(), "components": self.components}

    def get_config(self):
        return {**super().get_config(), "components": self.components, "image_shape": list(self.image_shape)}


def build(model_cfg: Any, image_shape: tuple) -> Prior:
    """The prior layer named by a config's model section (model.prior and the settings it reads)."""
    cls = FAMILY.get(model_cfg.prior)
    return cls(model_cfg.latent_dim, **cls.options(model_cfg, image_shape), name="prior")
