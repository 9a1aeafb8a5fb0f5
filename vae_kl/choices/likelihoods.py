"""Decoder likelihoods p(x|z): one small Keras layer per distribution over pixel values.

A likelihood turns the decoder's logits (batch, H, W, C) into a negative log-likelihood per
pixel value and into the image it stands for (its mean). It is part of the saved model, so a
learned σ is saved with the weights. To add a likelihood: write its class here with its traits
and `@FAMILY.register`, and test it in tests/test_losses.py; loss.likelihood then accepts its
name (registry.py says how a plain class becomes a Keras layer without loading TensorFlow here).
"""

import math
from typing import Any, Literal, Union

from vae_kl.choices import registry
from vae_kl.choices.registry import Setting

ops, losses = registry.Deferred("keras.ops"), registry.Deferred("losses")  # Keras only when the math runs.

FAMILY = registry.Family("loss.likelihood", layers=True)


class Likelihood:
    """Base class. Subclasses define nll (per pixel value, no reduction) and mean, and their traits.

    The traits below are class-level and read the config's options only (no TensorFlow): what the
    objective means with this likelihood, what to expect and what to advise. The base answers for a
    likelihood without a scale of its own; the Gaussian answers for its σ.
    """

    family, __new__ = FAMILY, registry.new_layer
    name_in_config = None  # The config name (loss.likelihood); `name` is Keras's layer name.
    summary = ""  # A few words for help texts.
    formula = None  # How the start-up line writes the summed negative log-likelihood.
    has_sigma = False  # Whether log_sigma returns a σ (reported per epoch and in summary.json).
    settings = ()  # Loss settings only this likelihood reads (config refuses them with another).
    shows = "sigmoid(logits), the mean"  # What reconstructions and samples draw (its `mean`).
    beta_predicts_collapse = True  # Whether β alone says when the code collapses (not when a σ scales the NLL).

    @classmethod
    def options(cls, loss_cfg) -> dict:
        """Constructor arguments from the config's loss section (the settings it reads)."""
        return {}

    @classmethod
    def equivalences(cls, options: dict, beta: float) -> dict:
        """More entries for the objective's description (summary.json) that only this likelihood has."""
        return {}

    @classmethod
    def statement(cls, description: dict) -> str:
        """A sentence the start-up line adds about what the objective is for this likelihood ('' for none)."""
        return ""

    @classmethod
    def expectation(cls, options: dict, description: dict):
        """'Expect: ...' when this likelihood decides what to expect rather than β, else None."""
        return None

    @classmethod
    def divergence_advice(cls, options: dict):
        """The likeliest cause of a NaN loss that is this likelihood's, with the setting to change, or None."""
        return None

    @classmethod
    def collapse_advice(cls, options: dict, beta: float):
        """What to change when a code collapsed because of this likelihood's settings, or None."""
        return None

    @classmethod
    def reconstruction_floor(cls, options: dict, num_pixels: int):
        """(least value, why) of the summed NLL per example, which bounds GECO's κ from below; None for a
        density on continuous data, whose negative log-likelihood can be any number (below 0 as it sharpens)."""
        return None

    def config_options(self) -> dict:
        """The options this layer was built with (what `options` read from the config)."""
        return {}

    def nll(self, x, logits, log_sigma=None):
        """-log p(x|z) per pixel value, same shape as x; log_sigma only matters to the Gaussian."""
        raise NotImplementedError

    def mean(self, logits):
        """E[x|z] per pixel value, same shape as logits: the image a reconstruction shows."""
        return ops.sigmoid(logits)

    def log_sigma(self, x, logits, batch_mean=None):
        """log σ in force for this batch (a scalar), or None for likelihoods without a σ. batch_mean:
        the mean over the global batch under tf.distribute (slicing.GlobalBatch.mean), else None."""
        return None

    def describe(self):
        """What summary.json records about this likelihood."""
        return {"name": self.name_in_config, "image": self.shows}


@FAMILY.register
class Bernoulli(Likelihood):
    """Binary cross-entropy from logits: the tutorial's reconstruction loss."""

    name_in_config, summary, formula = "bernoulli", "the tutorial's BCE", "Σ BCE"

    @classmethod
    def reconstruction_floor(cls, options, num_pixels):
        return 0.0, "a sum of −log probabilities, never below 0"

    def nll(self, x, logits, log_sigma=None):
        return losses.bernoulli_nll(x, logits)


@FAMILY.register
class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), a normalised density on [0, 1]."""

    name_in_config, formula, shows = "continuous_bernoulli", "Σ CB NLL", "the continuous Bernoulli's mean"
    summary = "a density on [0, 1]"

    def nll(self, x, logits, log_sigma=None):
        return losses.continuous_bernoulli_nll(x, logits)

    def mean(self, logits):
        return losses.continuous_bernoulli_mean(logits)


SIGMA = Setting.of("gaussian_sigma", Union[float, Literal["learned", "optimal"]], "learned",
                   "Pixel σ: a fixed number, learned (the σ-VAE) or optimal (σ² = the batch's MSE).", gt=0, le=1e3)


@FAMILY.register
class Gaussian(Likelihood):
    """N(x; sigmoid(logits), σ²) per pixel value, with one σ shared by all pixels.

    sigma: a fixed number, "learned" (one trainable log σ, the σ-VAE of Rybkin et al. 2021) or
    "optimal" (σ² = the batch's mean squared error, the same paper's analytic σ).
    """

    name_in_config, summary, formula, has_sigma = "gaussian", "MSE with a σ", "Σ Gaussian NLL", True
    settings, beta_predicts_collapse = (SIGMA,), False
    # A fixed σ' above this treats most of a digit in [0, 1] as noise (measured, docs/kl_weighting.md): blurry
    # reconstructions, or a collapsed code.
    BLURRY_SIGMA = 0.3

    @classmethod
    def options(cls, loss_cfg):
        return {"sigma": loss_cfg.gaussian_sigma}

    @classmethod
    def equivalences(cls, options, beta):
        sigma = options.get("sigma")
        if not isinstance(sigma, (int, float)):
            return {}
        # SSE/(2σ²) + β·KL = (1/(2σ²))·[SSE + 2σ²β·KL] up to a constant: the ELBO (β = 1) of σ' = σ·√β.
        return {"sse_equivalent_beta": 2.0 * sigma ** 2 * beta, "equivalent_sigma": sigma * math.sqrt(beta)}

    @classmethod
    def statement(cls, description):
        if "sse_equivalent_beta" not in description:
            return ""
        return (f" With fixed σ this is plain SSE + {description['sse_equivalent_beta']:.4g}·KL up to a constant: "
                f"the ELBO (β = 1) of a Gaussian decoder with σ = {description['equivalent_sigma']:.4g}.")

    @classmethod
    def expectation(cls, options, description):
        if "equivalent_sigma" not in description:
            return (f"Expect: the data choose σ ({options.get('sigma')}), and σ² is the KL's weight against the "
                    f"summed squared error, so the balance adapts (Rybkin et al. 2021); β = "
                    f"{description['effective_beta']:g} multiplies it.")
        sigma = description["equivalent_sigma"]
        if sigma > cls.BLURRY_SIGMA:
            return (f"Expect: blurry reconstructions or posterior collapse: a Gaussian decoder with σ = {sigma:.3g} "
                    f"treats most of a digit in [0, 1] as noise, so the code has little to explain.")
        return f"Expect: a code in use; σ = {sigma:.3g} is the noise the decoder assumes, so smaller is sharper."

    @classmethod
    def reconstruction_floor(cls, options, num_pixels):
        sigma = options.get("sigma")
        if not isinstance(sigma, (int, float)):
            return None  # A learned or optimal σ shrinks as the fit improves: the NLL has no floor.
        floor = num_pixels * math.log(sigma * math.sqrt(2 * math.pi))  # SSE/(2σ²) + D·log(σ√(2π)) at SSE = 0.
        return floor, f"with a fixed σ = {sigma:g} the NLL is SSE/(2σ²) + D·log(σ√(2π)), at least the constant"

    @classmethod
    def divergence_advice(cls, options):
        return "a gaussian σ near 0 makes the loss explode; set loss.gaussian_sigma to a larger number or 'optimal'."

    @classmethod
    def collapse_advice(cls, options, beta):
        sigma = options.get("sigma")
        if not isinstance(sigma, float) or sigma <= cls.BLURRY_SIGMA:
            return None
        return (f"Lower loss.gaussian_sigma: a fixed σ = {sigma:g} makes the reconstruction term weak (it equals "
                f"MSE-sum + {2 * sigma ** 2 * beta:.3g}·KL); try 0.1, or 'learned' or 'optimal'.")

    def __init__(self, sigma="learned", **kwargs):
        super().__init__(**kwargs)
        self.sigma = sigma
        self.learned_log_sigma = None
        if sigma == "learned":
            self.learned_log_sigma = self.add_weight(shape=(), initializer="zeros", name="log_sigma")
        # Set by VAE.load_own_variables when a model saved before this layer existed held log σ itself.
        self.restored_by_parent = False

    def config_options(self):
        return {"sigma": self.sigma}

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


def build(loss_cfg: Any) -> Likelihood:
    """The likelihood layer named by a config's loss section (loss.likelihood and the settings it reads)."""
    cls = FAMILY.get(loss_cfg.likelihood)
    return cls(**cls.options(loss_cfg), name="likelihood")
