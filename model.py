"""The keras.io convolutional VAE, with the KL weighting you choose: VAE(encoder, decoder, likelihood, prior).

As in the keras.io example, the encoder and decoder are functional models and the VAE is the one
subclassed keras.Model, with its own train_step and test_step. The networks are the tutorial's layer for
layer (vae_kl/choices/architectures.py), except that the decoder outputs logits: the likelihood (a layer;
the Bernoulli is the tutorial's binary cross-entropy) turns them into the loss and into the image, so
`VAE.call` returns the tutorial's sigmoid. The prior is a layer too, so model.keras holds the four parts.
How the terms are reduced and weighted (the effective β, a schedule, GECO's target) is the objective, a
training choice that goes through `compile`, as keras-io's dcgan_overriding_train_step.py passes its
losses. `keras.saving.load_model("model.keras")` works once this module is imported.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import losses
from vae_kl.choices import architectures, fast_layers, likelihoods, priors  # noqa: F401  (fast_layers: for loading)
from vae_kl.choices.sampling import reparameterize
from vae_kl.parts import legacy
from vae_kl.parts.distributed_build import BuiltOnceModel
from vae_kl.parts.geco import GECO
from vae_kl.parts.slicing import GlobalBatch, map_shards
from vae_kl.parts.trackers import WeightedMeans
from vae_kl.spec.objective import Objective, Terms

# Every likelihood and prior as a Keras layer class, registered for saving, so any saved model loads.
likelihoods.FAMILY.make_layer_classes()
priors.FAMILY.make_layer_classes()
# What model.keras records as the VAE's own variables: none (GECO's state is its own layer). Files of
# earlier versions name another layout, or none at all (legacy.restore_own_variables reads them).
OWN_VARIABLES = "none"


@keras.saving.register_keras_serializable(package="vae_kl")
class VAE(BuiltOnceModel):
    """VAE(encoder, decoder, likelihood, prior); train with compile(optimizer, objective, batch_shards) and fit.

    encoder: images (batch, H, W, C) -> [z_mean, z_log_var, z] (batch, latent_dim), its layer "z" sampling;
    decoder: z -> logits (batch, H, W, C); likelihood, prior: layers (default Bernoulli, StandardNormal).
    batch_shards runs the networks on N slices of each batch at once; every number stays the whole batch's.
    """

    def __init__(self, encoder, decoder, likelihood=None, prior=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim = int(encoder.outputs[0].shape[-1])
        self.image_shape = tuple(int(s) for s in encoder.inputs[0].shape[1:])
        self.num_pixels = int(np.prod(self.image_shape))
        self.likelihood = likelihood if likelihood is not None else likelihoods.Bernoulli(name="likelihood")
        self.prior = prior if prior is not None else priors.StandardNormal(self.latent_dim, name="prior")
        self.geco = GECO(name="geco")  # β's controller when the objective chooses it (kl_weight: auto).
        self.objective, self.batch_shards = Objective(), 1
        self.from_version_1, self.stored_own_variables = False, OWN_VARIABLES  # from_config: the file's.
        self.terms_tracker = WeightedMeans(["loss", "reconstruction", "kl", "neg_elbo"]
                                           + (["sigma"] if self.likelihood.has_sigma else []))
        # The encoder up to z_mean and z_log_var (the noise is drawn per batch), kept out of Keras's tracking so
        # that it adds nothing to model.keras: its layers are the encoder's.
        object.__setattr__(self, "encoder_moments", keras.Model(encoder.input, encoder.outputs[:2], name="moments"))
        self.built = True

    def compile(self, optimizer="adam", objective=None, batch_shards=None, **kwargs):
        """Keras's compile, plus the training objective and the number of batch slices."""
        super().compile(optimizer=optimizer, **kwargs)
        if objective is not None:
            self.objective = objective
            if objective.tc_weight is not None and "tc" not in self.terms_tracker.names:
                self.terms_tracker = WeightedMeans(self.terms_tracker.names + ("tc",))  # Metrics are not saved.
        if batch_shards is not None:
            self.batch_shards = int(batch_shards)

    def get_compile_config(self):
        config = super().get_compile_config()
        return {**config, "objective": dataclasses.asdict(self.objective), "batch_shards": self.batch_shards} \
            if config else config

    def compile_from_config(self, config):
        if self.from_version_1:  # Its optimizer state (log σ first) does not fit the new layers; evaluating needs none.
            return
        config = dict(config)
        objective, batch_shards = config.pop("objective", None), config.pop("batch_shards", None)
        self.compile(objective=legacy.objective_from_saved(objective) if objective else None,
                     batch_shards=batch_shards, **keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return [self.terms_tracker]

    def call(self, inputs, training=False):
        """Reconstruct images from their posterior means: (batch, H, W, C) -> same shape."""
        return self.decode(self.encode(inputs, training)[0])

    def encode(self, images, training=False):
        """images -> (z_mean, z_log_var), each (batch, latent_dim), in float32 under any precision policy."""
        return tuple(ops.cast(t, "float32") for t in self.encoder_moments(images, training=training))

    def decode(self, z):
        """Latent codes (batch, latent_dim) -> mean images (batch, H, W, C)."""
        return self.likelihood.mean(ops.cast(self.decoder(z), "float32"))

    def compute_terms(self, data, training):
        """(objective.Terms, log σ or None, its GlobalBatch) for images (batch, H, W, C); ε drawn for the batch."""
        x = data[0] if isinstance(data, (tuple, list)) else data
        batch = GlobalBatch(ops.shape(x)[0])
        epsilon = batch.own_rows(self.encoder.get_layer("z").draw((batch.size, self.latent_dim)))

        def one_slice(images, noise):  # Networks in the policy's precision; code, KL and likelihood in float32.
            z_mean, z_log_var = self.encode(images, training)
            z = reparameterize(z_mean, z_log_var, noise)
            return z_mean, z_log_var, z, ops.cast(self.decoder(z, training=training), "float32")

        z_mean, z_log_var, z, logits = map_shards(one_slice, [x, epsilon], self.batch_shards)
        log_sigma = self.likelihood.log_sigma(x, logits, batch.mean if batch.replicated else None)
        reconstruction = losses.sum_over_pixels(self.likelihood.nll(x, logits, log_sigma))  # (batch,) Σ NLL
        kl_per_dim = self.prior.kl(z_mean, z_log_var, z, lambda images: self.encode(images, training))
        tc = None if self.objective.tc_weight is None else losses.total_correlation(z, z_mean, z_log_var)
        return Terms(reconstruction, kl_per_dim, self.num_pixels, self.latent_dim, batch.mean, tc), log_sigma, batch

    def beta(self):
        """The effective β GECO chose (a scalar tensor) when the objective chooses β, else None."""
        return self.geco.beta() if self.objective.chooses_beta else None

    def train_step(self, data):
        with tf.GradientTape() as tape:
            terms, log_sigma, batch = self.compute_terms(data, training=True)
            loss = self.objective.loss(terms, self.optimizer.iterations, self.beta())
            scaled_loss = self.optimizer.scale_loss(loss)  # mixed_float16's loss scale (apply unscales); else loss.
        # Under tf.distribute, replica r's share of the global batch's gradient: the optimizer SUMs the shares.
        grads = tape.gradient(scaled_loss, self.trainable_weights)
        if self.objective.chooses_beta:  # Before apply, which advances the step counter.
            self.geco.update(batch.local_mean(terms.reconstruction), ops.equal(self.optimizer.iterations, 0),
                             self.objective)
        self.optimizer.apply(grads, self.trainable_weights)
        return self.report(terms, loss, log_sigma, batch)

    def test_step(self, data):
        terms, log_sigma, batch = self.compute_terms(data, training=False)
        step = self.optimizer.iterations if self.optimizer is not None else 0
        loss = self.objective.loss(terms, step, self.beta())
        return self.report(terms, loss, log_sigma, batch)

    def report(self, terms, loss, log_sigma, batch):
        """The trackers' means, each batch weighted by its size (under tf.distribute: WeightedMeans.of_terms)."""
        self.terms_tracker.update_state(WeightedMeans.of_terms(terms, loss, log_sigma, batch), batch.local_size)
        return self.terms_tracker.result()

    def get_config(self):
        parts = {name: keras.saving.serialize_keras_object(getattr(self, name))
                 for name in ("encoder", "decoder", "likelihood", "prior")}
        return {**super().get_config(), **parts, "own_variables": OWN_VARIABLES}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "encoder" not in config:
            return legacy.from_version_1_config(cls, config)
        stored = config.pop("own_variables", None)  # None: saved before the layout was recorded.
        vae = cls(**{name: keras.saving.deserialize_keras_object(config.pop(name))
                     for name in ("encoder", "decoder", "likelihood", "prior")}, **config)
        vae.stored_own_variables = stored
        return vae

    def load_own_variables(self, store):
        legacy.load_own_variables(self, store, OWN_VARIABLES)  # This version's VAE has none; earlier ones had some.


def build_vae(model_cfg, loss_cfg, seed, image_shape=architectures.IMAGE_SHAPE, precision="float32"):
    """The VAE a config describes (its model and loss sections), for images of image_shape (H, W, C).

    precision: the Keras dtype policy of the encoder's and decoder's layers (train.precision); the
    sampling layer, the likelihood and the prior stay float32, and so do all weights.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        encoder, decoder = architectures.build(model_cfg, image_shape, seed)
    finally:
        keras.config.set_dtype_policy(previous)
    return VAE(encoder, decoder, likelihoods.build(loss_cfg), priors.build(model_cfg, image_shape))


def load(path):
    """The VAE in a model.keras written by train.py, loaded in Keras's safe mode (no code from the file runs)."""
    return keras.saving.load_model(path, safe_mode=True)
