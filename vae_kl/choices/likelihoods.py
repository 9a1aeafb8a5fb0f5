"""Decoder likelihoods p(x|z): one small Keras layer per distribution over pixel values.

A likelihood turns the decoder's logits (batch, H, W, C) into a negative log-likelihood per
pixel value and into the image it stands for (its mean). It is part of the saved model, so a
learned σ is saved with the weights. To add a likelihood: write its class here with its traits
and `@FAMILY.register`, and test it in tests/test_losses.py; loss.likelihood then accepts its
name (registry.py says how a plain class becomes a Keras layer without loading TensorFlow here).
"""

import math

from vae_kl.choices import registry

ops, losses = registry.Deferred("keras.ops"), registry.Deferred("losses")  # Keras only when the math runs.

FAMILY = registry.Family("loss.likelihood", layers=True)


class Likelihood:
    """Base class. Subclasses define nll (per pixel value, no reduction) and mean, and their traits."""

    family, __new__ = FAMILY, registry.new_layer
    name_in_config = None  # The config name (loss.likelihood); `name` is Keras's layer name.
    formula = None  # How the start-up line writes the summed negative log-likelihood.
    has_sigma = False  # Whether log_sigma returns a σ (reported per epoch and in summary.json).
    settings_read = ()  # Loss-section keys only this likelihood reads (config refuses them with another).
    shows = "sigmoid(logits), the mean"  # What reconstructions and samples draw (its `mean`).

    @classmethod
    def options(cls, loss_cfg):
        """Constructor arguments from the config's loss section (the settings in settings_read)."""
        return {}

    def nll(self, x, logits, log_sigma=None):
        """-log p(x|z) per pixel value, same shape as x; log_sigma only matters to the Gaussian."""
        raise NotImplementedError

    def mean(self, logits):
        """E[x|z] per pixel value, same shape as logits: the image a reconstruction shows."""
        return ops.sigmoid(logits)

    def log_sigma(self, x, logits, batch_mean=None):
        """log σ in force for this batch (a scalar), or None for likelihoods without a σ. batch_mean:
        the mean over the global batch under tf.distribute (shards.GlobalBatch.mean), else None."""
        return None

    def describe(self):
        """What summary.json records about this likelihood."""
        return {"name": self.name_in_config, "image": self.shows}


@FAMILY.register
class Bernoulli(Likelihood):
    """Binary cross-entropy from logits: the tutorial's reconstruction loss."""

    name_in_config, formula = "bernoulli", "Σ BCE"

    def nll(self, x, logits, log_sigma=None):
        return losses.bernoulli_nll(x, logits)


@FAMILY.register
class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), a normalised density on [0, 1]."""

    name_in_config, formula, shows = "continuous_bernoulli", "Σ CB NLL", "the continuous Bernoulli's mean"

    def nll(self, x, logits, log_sigma=None):
        return losses.continuous_bernoulli_nll(x, logits)

    def mean(self, logits):
        return losses.continuous_bernoulli_mean(logits)


@FAMILY.register
class Gaussian(Likelihood):
    """N(x; sigmoid(logits), σ²) per pixel value, with one σ shared by all pixels.

    sigma: a fixed number, "learned" (one trainable log σ, the σ-VAE of Rybkin et al. 2021) or
    "optimal" (σ² = the batch's mean squared error, the same paper's analytic σ).
    """

    name_in_config, formula, has_sigma, settings_read = "gaussian", "Σ Gaussian NLL", True, ("gaussian_sigma",)

    @classmethod
    def options(cls, loss_cfg):
        return {"sigma": loss_cfg.gaussian_sigma}

    def __init__(self, sigma="learned", **kwargs):
        super().__init__(**kwargs)
        self.sigma = sigma
        self.learned_log_sigma = None
        if sigma == "learned":
            self.learned_log_sigma = self.add_weight(shape=(), initializer="zeros", name="log_sigma")
        # Set by VAE.load_own_variables when a model saved before this layer existed held log σ itself.
        self.restored_by_parent = False

    def nll(self, x, logits, log_sigma=None):
        if log_sigma is None:
            log_sigma = self.log_sigma(x, logits)
        return losses.gaussian_nll(x, ops.sigmoid(logits), log_sigma)

    def log_sigma(self, x, logits, batch_mean=None):
        if self.sigma == "learned":
            return self.learned_log_sigma
        if self.sigma == "optimal":
            return losses.optimal_log_sigma(x, ops.sigmoid(logits), batch_mean)
        return ops.convert_to_tensor(math.log(float(self.sigma)), dtype="float32")

    def describe(self):
        return {**super().describe(), "sigma": self.sigma}

    def load_own_variables(self, store):
        if self.restored_by_parent and not list(store.keys()):
            return  # A version-1 file: the VAE already restored log σ from its own variables.
        super().load_own_variables(store)

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma}


def build(loss_cfg):
    """The likelihood layer named by a config's loss section (loss.likelihood and the settings it reads)."""
    cls = FAMILY.get(loss_cfg.likelihood)
    return cls(**cls.options(loss_cfg), name="likelihood")
