"""The keras.io convolutional VAE: VAE(encoder, decoder, likelihood, prior), trained by compile(objective).

The encoder and decoder are the tutorial's functional models (networks.py), whose decoder outputs
logits; `VAE.call` and `VAE.decode` return the likelihood's mean, which for the Bernoulli is the
tutorial's sigmoid. The likelihood (likelihoods.py) and the prior
(priors.py) are layers saved with the model; the objective (objective.Objective) is a training
choice and goes through `compile`, as keras-io's dcgan_overriding_train_step.py passes its losses.
"""

import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import losses
from vae_kl.choices import likelihoods, priors
from vae_kl.choices.architectures import IMAGE_SHAPE, build_decoder, build_encoder, reparameterize
from vae_kl.spec.objective import Objective
from vae_kl.training import legacy
from vae_kl.training.slicing import GlobalBatch, map_shards

GECO_LOG_BOUND = 13.8  # |log λ| of GECO's multiplier at most: β = 1/λ in [1e-6, 1e6].
GECO_PROGRESS = 1e-3  # While GECO holds its multiplier, a fall of the constraint's average by this much is progress.

# Every likelihood and prior as a Keras layer class, registered for saving, so any saved model loads.
likelihoods.FAMILY.make_layer_classes()
priors.FAMILY.make_layer_classes()


@keras.saving.register_keras_serializable(package="vae_kl")
class WeightedMeans(keras.metrics.Metric):
    """Running means of several scalars, each batch weighted by its size; result() is {name: mean}.

    The same numbers as one keras.metrics.Mean per name updated with sample_weight, in one
    vector add per step instead of about fifteen small ops per Mean, which for four Means
    cost 3 to 5 % of a train step on a 2-core CPU (docs/performance.md).
    """

    def __init__(self, names, name="terms", **kwargs):
        super().__init__(name=name, **kwargs)
        self.names = tuple(names)
        self.totals = self.add_variable(shape=(len(self.names),), initializer="zeros", name="totals")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, weight):
        """values: (len(names),) batch means in the order of names; weight: the batch's size."""
        weight = ops.cast(weight, self.dtype)
        self.totals.assign_add(ops.cast(values, self.dtype) * weight)
        self.count.assign_add(weight)

    def result(self):
        means = ops.divide_no_nan(self.totals, self.count)  # (len(names),)
        return {name: means[i] for i, name in enumerate(self.names)}

    def get_config(self):
        return {**super().get_config(), "names": list(self.names)}


# The VAE's own variables as model.keras stores them, in order: a file records this name, so a later layout
# gets a new name and the loader knows which one it reads (before it was recorded, only their number told).
OWN_VARIABLES = "geco-5"


@keras.saving.register_keras_serializable(package="vae_kl")
class VAE(keras.Model):
    """A VAE made of four parts: encoder, decoder, likelihood p(x|z) and prior p(z).

    Train it with `vae.compile(optimizer=..., objective=objective.Objective(...), batch_shards=N)`:
    the objective says how the terms are reduced and weighted; batch_shards runs the encoder and
    decoder on N slices of each batch, which TensorFlow executes side by side on the CPU cores
    (train.configure_threads). The sampling noise is drawn once for the whole batch and the loss
    is computed on the whole batch, so every number equals the unsharded one within float32
    rounding. model.keras stores the four parts; the objective is kept in the compile config.

    Args:
        encoder: functional model, images (batch, H, W, C) -> [z_mean, z_log_var, z] (batch, latent_dim);
            its layer "z" is a Sampling layer.
        decoder: functional model, z (batch, latent_dim) -> logits (batch, H, W, C).
        likelihood: a likelihoods.Likelihood (default Bernoulli).
        prior: a priors.Prior (default StandardNormal).
    """

    def __init__(self, encoder, decoder, likelihood=None, prior=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim = int(encoder.outputs[0].shape[-1])
        self.image_shape = tuple(int(s) for s in encoder.inputs[0].shape[1:])
        self.num_pixels = int(np.prod(self.image_shape))
        self.likelihood = likelihood if likelihood is not None else likelihoods.Bernoulli(name="likelihood")
        self.prior = prior if prior is not None else priors.StandardNormal(self.latent_dim, name="prior")
        self.objective, self.batch_shards = Objective(), 1
        self.from_version_1 = False  # Set when loaded from a file saved before the four-part design.
        self.stored_own_variables = OWN_VARIABLES  # from_config: the layout the loaded file names (None: unnamed).
        names = ["loss", "reconstruction", "kl", "neg_elbo"]
        if self.likelihood.has_sigma:
            names.append("sigma")
        self.terms_tracker = WeightedMeans(names)
        # GECO's state (objective.chooses_beta), saved with the weights so a resumed run keeps its multiplier:
        # log λ, with β = 1/λ; the moving average of the constraint reconstruction/κ - 1; and its hold (1 while
        # held at the start), the lowest average while held, and the steps since that lowest fell by GECO_PROGRESS.
        self.geco_log_multiplier, self.geco_constraint, self.geco_held, self.geco_best, self.geco_stalled = (
            self.add_weight(shape=(), initializer=start, trainable=False, name=f"geco_{name}")
            for name, start in (("log_multiplier", "zeros"), ("constraint", "zeros"), ("held", "ones"),
                                ("best", "zeros"), ("stalled", "zeros")))
        self.built = True

    def compile(self, optimizer="adam", objective=None, batch_shards=None, **kwargs):
        """Keras's compile, plus the training objective and the number of batch slices."""
        super().compile(optimizer=optimizer, **kwargs)
        if objective is not None:
            self.objective = objective
            if objective.tc_weight is not None and "tc" not in self.terms_tracker.names:
                # The batch's total correlation estimate joins the logged terms (metrics are not saved).
                self.terms_tracker = WeightedMeans(self.terms_tracker.names + ("tc",))
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
        objective = config.pop("objective", None)
        batch_shards = config.pop("batch_shards", None)
        config = keras.saving.deserialize_keras_object(config)
        self.compile(objective=Objective(**objective) if objective else None, batch_shards=batch_shards, **config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return [self.terms_tracker]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Private, and kept: Keras 3.15 rebuilds a tf.distribute model from replicas of unequal slices and fails.
        if self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def call(self, inputs, training=False):
        """Reconstruct images from their posterior means: (batch, H, W, C) -> same shape."""
        z_mean, _, _ = self.encoder(inputs, training=training)
        return self.decode(z_mean)

    def decode(self, z):
        """Latent codes (batch, latent_dim) -> mean images (batch, H, W, C)."""
        return self.likelihood.mean(ops.cast(self.decoder(z), "float32"))

    @property
    def sampling(self):
        return self.encoder.get_layer("z")

    def reseed(self, epoch):
        """Make this epoch's noise a function of (seed, epoch) only, so a resumed run draws the same."""
        base = 0 if self.sampling.seed is None else self.sampling.seed
        state = self.sampling.seed_generator.state
        state.assign(np.array([base + 1, 1_000_003 * (epoch + 1)], dtype=state.dtype))

    def kl_weight_in_force(self):
        """λ times the schedule's multiplier at the optimizer's current step (GECO: the λ of its β)."""
        if self.objective.chooses_beta:
            return self.objective.kl_weight_for_beta(self.beta_in_force(), self.latent_dim, self.num_pixels)
        return self.objective.kl_weight_at(self.optimizer.iterations if self.optimizer is not None else 0)

    def beta_in_force(self):
        """GECO's effective β = 1/λ = exp(-log λ) (a scalar tensor)."""
        return ops.exp(-self.geco_log_multiplier)

    def geco_step(self, reconstruction, first_step):
        """GECO's multiplier update after a step (Rezende & Viola 2018): the constraint c = reconstruction/κ - 1
        (the batch's mean summed NLL, relative to κ) enters a moving average, started at the first step's c,
        and log λ moves by rate·average: λ grows (β falls) while the reconstruction is above κ.

        Anti-windup: early on the reconstruction is far above any κ the network can reach yet, whatever β is,
        and integrating that drives λ to its bound, from which it takes thousands of steps to return. So log λ
        holds its start until the average first reaches 0 (κ reached) or has not fallen by GECO_PROGRESS for
        objective.geco_patience steps (κ out of reach at this β: then β must fall). Released, it stays so.
        """
        goal = self.objective
        c = ops.stop_gradient(reconstruction) / goal.target_distortion - 1.0
        average = ops.where(first_step, c, goal.geco_smoothing * self.geco_constraint + (1 - goal.geco_smoothing) * c)
        self.geco_constraint.assign(average)
        progress = ops.logical_or(first_step, average < self.geco_best - GECO_PROGRESS)
        self.geco_best.assign(ops.where(progress, average, self.geco_best))
        self.geco_stalled.assign(ops.where(progress, 0.0, self.geco_stalled + 1.0))
        reached, stalled = average <= 0.0, self.geco_stalled >= float(goal.geco_patience)
        released = ops.logical_or(self.geco_held < 0.5, ops.logical_or(reached, stalled))
        self.geco_held.assign(ops.where(released, 0.0, 1.0))
        # Bounded to β in [1e-6, 1e6]: a κ the model cannot reach would otherwise drive λ to overflow.
        step = ops.where(released, goal.geco_rate * average, 0.0)
        self.geco_log_multiplier.assign(ops.clip(self.geco_log_multiplier + step, -GECO_LOG_BOUND, GECO_LOG_BOUND))

    @functools.cached_property
    def encoder_moments(self):
        """The encoder up to z_mean and z_log_var (shared layers, no sampling).

        Stored by cached_property in the instance dict, out of Keras's attribute tracking, so it
        adds nothing to the saved model: its layers are the encoder's.
        """
        return keras.Model(self.encoder.input, self.encoder.outputs[:2], name="encoder_moments")

    @functools.cached_property
    def decode_logits(self):
        """A compiled function: decoder logits (batch, H, W, C) for codes z (batch, latent_dim).

        Runs the decoder in batch_shards slices side by side, as training does; evaluation decodes
        tens of thousands of codes through it. (Plain eager calls would run one op at a time, on a
        single thread when train.configure_threads has split the cores between slices.)
        """
        def decode(z):
            return map_shards(lambda part: self.decoder(part, training=False), [z], self.batch_shards)[0]
        return tf.function(decode, reduce_retracing=True)

    def reconstruct(self, x):
        """Mean images (n, H, W, C) as numpy for images x, decoded from their posterior means: what predict
        gives, without its per-call set-up (the grids drawn after every epoch use it)."""
        z_mean, _ = self.encoder_moments(x, training=False)
        return np.asarray(self.likelihood.mean(ops.cast(self.decode_logits(z_mean), "float32")))

    def encode_for_prior(self, training=False):
        """images -> (z_mean, z_log_var), the callable a prior gets (the VampPrior encodes its pseudo-inputs);
        float32 under a mixed precision policy too, as the losses are."""
        return lambda images: tuple(ops.cast(t, "float32") for t in self.encoder_moments(images, training=training))

    def forward(self, x, training, batch=None):
        """z_mean, z_log_var, z (batch, latent_dim) and logits (batch, H, W, C) for images x.

        The encoder and decoder run on batch_shards slices of x: independent ops, which TensorFlow's
        inter-op threads execute at the same time. The noise ε is drawn first, for the whole batch,
        from the encoder's sampling layer, exactly as the unsharded encoder draws it, so the results
        do not depend on batch_shards.

        batch: the GlobalBatch x belongs to. Under tf.distribute every replica's generator holds the
        same state, so each replica draws the noise of the whole global batch (global batch,
        latent_dim) and keeps its own rows: each digit gets the ε it gets on one device, rather than
        every replica reusing the same first rows.
        """
        batch = batch or GlobalBatch(ops.shape(x)[0])
        epsilon = batch.own_rows(self.sampling.draw((batch.size, self.latent_dim)))

        def one_slice(images, noise):
            # Under a mixed-precision policy the networks compute in 16 bits; the code, the KL and the
            # likelihood are computed in float32 from here on. (No-ops in float32.)
            z_mean, z_log_var = (ops.cast(t, "float32") for t in self.encoder_moments(images, training=training))
            z = reparameterize(z_mean, z_log_var, noise)
            return z_mean, z_log_var, z, ops.cast(self.decoder(z, training=training), "float32")

        return map_shards(one_slice, [x, epsilon], self.batch_shards)

    def compute_terms(self, x, training, batch=None):
        """Forward pass and every loss term for a batch of images x (batch, H, W, C).

        Under tf.distribute (see GlobalBatch) "loss" and "sigma" are the global batch's, and the other
        terms are means over this replica's digits: the trackers weight both by the local batch size,
        and their replicas' sums give the global means.
        """
        batch = batch or GlobalBatch(ops.shape(x)[0])
        z_mean, z_log_var, z, logits = self.forward(x, training, batch)
        log_sigma = self.likelihood.log_sigma(x, logits, batch.mean if batch.replicated else None)
        reconstruction = losses.sum_over_pixels(self.likelihood.nll(x, logits, log_sigma))  # (batch,) nats per digit
        kl_terms = self.prior.kl(z_mean, z_log_var, z, self.encode_for_prior(training))  # (batch, latent_dim or 1)
        step = self.optimizer.iterations if self.optimizer is not None else 0
        beta = self.beta_in_force() if self.objective.chooses_beta else None
        tc = None if self.objective.tc_weight is None else losses.total_correlation(z, z_mean, z_log_var)
        loss = self.objective.loss(reconstruction, kl_terms, self.num_pixels, self.latent_dim, step, batch.mean, beta,
                                   tc)
        kl = ops.sum(kl_terms, axis=1)  # (batch,) true KL, whatever free bits did to the loss
        terms = {"loss": loss, "reconstruction": batch.local_mean(reconstruction), "kl": batch.local_mean(kl),
                 "neg_elbo": batch.local_mean(reconstruction + kl)}
        if tc is not None:
            terms["tc"] = tc
        if log_sigma is not None:
            terms["sigma"] = ops.exp(log_sigma)
        return terms

    def _unpack(self, data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def _report(self, terms, batch_size):
        # Weight by batch size so a short last batch counts per digit, not per batch.
        names = self.terms_tracker.names
        self.terms_tracker.update_state(ops.stack([terms[name] for name in names]), batch_size)
        return self.terms_tracker.result()

    def train_step(self, data):
        x = self._unpack(data)
        with tf.GradientTape() as tape:
            terms = self.compute_terms(x, training=True)
            # The identity except under mixed_float16's LossScaleOptimizer, whose apply unscales; inside the
            # tape, or the scaled loss has no gradient.
            scaled_loss = self.optimizer.scale_loss(terms["loss"])
        # Under tf.distribute this is replica r's share of the global-batch gradient (GlobalBatch); Keras's
        # optimizer all-reduces (SUMs) the shares before applying them. No 1/replicas factor belongs here.
        grads = tape.gradient(scaled_loss, self.trainable_weights)
        if self.objective.chooses_beta:  # Before apply, which advances the step counter.
            self.geco_step(terms["reconstruction"], ops.equal(self.optimizer.iterations, 0))
        self.optimizer.apply(grads, self.trainable_weights)
        return self._report(terms, ops.shape(x)[0])

    def test_step(self, data):
        x = self._unpack(data)
        return self._report(self.compute_terms(x, training=False), ops.shape(x)[0])

    def get_config(self):
        parts = {name: keras.saving.serialize_keras_object(getattr(self, name))
                 for name in ("encoder", "decoder", "likelihood", "prior")}
        return {**super().get_config(), **parts, "own_variables": OWN_VARIABLES}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "encoder" not in config:
            return legacy.from_version_1_config(cls, config)
        parts = {name: keras.saving.deserialize_keras_object(config.pop(name))
                 for name in ("encoder", "decoder", "likelihood", "prior")}
        # Files saved before "own_variables" was recorded: the number of stored variables tells them apart.
        stored = config.pop("own_variables", None)
        vae = cls(**parts, **config)
        vae.stored_own_variables = stored
        return vae

    def load_own_variables(self, store):
        stored = self.stored_own_variables
        if self.from_version_1:  # A version-1 file kept the learned log σ as the VAE's own variable.
            legacy.restore_log_sigma(self, store)
        elif stored is None and len(store.keys()) == 2:  # Version 3: GECO's multiplier and average, no hold.
            legacy.restore_geco_version_3(self, store)
        elif stored not in (None, OWN_VARIABLES):
            raise ValueError(f"this model.keras stores the VAE's own variables as {stored!r}, which this version "
                             f"does not know ({OWN_VARIABLES!r}); load it with the version that saved it.")
        elif list(store.keys()):  # Files saved before GECO's state existed hold none: it keeps its start.
            super().load_own_variables(store)


def build_vae(model_cfg, loss_cfg, seed, image_shape=IMAGE_SHAPE, precision="float32"):
    """The VAE a config describes (model and loss sections), for images of image_shape (H, W, C).

    precision: the Keras dtype policy of the encoder's and decoder's layers (train.precision); the
    sampling layer, the likelihood and the prior stay float32, and so do all weights.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        encoder = build_encoder(model_cfg.latent_dim, seed=seed, image_shape=image_shape)
        decoder = build_decoder(model_cfg.latent_dim, model_cfg.fast_layers, image_shape)
    finally:
        keras.config.set_dtype_policy(previous)
    return VAE(encoder, decoder, likelihoods.build(loss_cfg), priors.build(model_cfg, image_shape))
