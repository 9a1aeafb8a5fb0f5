"""The keras.io convolutional VAE: VAE(encoder, decoder, likelihood, prior), trained by compile(objective).

The encoder and decoder are functional models, the tutorial's layer for layer (for any image
H×W×C with H and W divisible by 4; MNIST keeps the tutorial's exact parameter count). One
change: the decoder's last layer outputs logits instead of sigmoid probabilities, so the losses
can be computed stably (losses.py); `VAE.call` and `VAE.decode` return the likelihood's mean,
which for the Bernoulli is the same sigmoid. The likelihood (likelihoods.py) and the prior
(priors.py) are layers saved with the model; the objective (objective.Objective) is a training
choice and goes through `compile`, as keras-io's dcgan_overriding_train_step.py passes its losses.
"""

import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

import likelihoods
import losses
import priors
from fast_layers import TapMatmulConv2DTranspose
from objective import Objective

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


def map_shards(fn, inputs, shards):
    """fn applied to `shards` consecutive slices of the batch, its outputs concatenated back.

    inputs: tensors with the same batch size; fn takes one slice of each. The slices are as
    equal as possible (the first batch % shards get one example more). A batch smaller than
    `shards` is zero-padded first, because oneDNN's convolutions reject empty batches; the
    padding's outputs are dropped, so the results never depend on `shards`.
    Returns a list with one (batch, ...) tensor per output of fn.
    """
    batch = tf.shape(inputs[0])[0]
    padded = tf.maximum(batch, shards)
    base = padded // shards
    sizes = base + tf.cast(tf.range(shards) < padded - base * shards, "int32")  # (shards,)
    pieces = [tf.split(tf.pad(t, [[0, padded - batch]] + [[0, 0]] * (len(t.shape) - 1)), sizes, num=shards)
              for t in inputs]
    outputs = [tf.nest.flatten(fn(*piece)) for piece in zip(*pieces)]
    return [tf.concat(parts, axis=0)[:batch] for parts in zip(*outputs)]


class GlobalBatch:
    """A replica's place in the step's global batch, and means over the global batch.

    Under tf.distribute (train.distribute mirrored or multi_worker) Keras runs train_step once per
    replica on its local slice of the global batch (MirroredStrategy: consecutive slices in replica
    order, the first ones one example larger), and the optimizer SUMs the replicas' gradients.
    mean(v) is the global-batch mean on every replica, with a gradient through this replica's own
    examples only: local_sum/B + stop_gradient(all_reduce(local_sum)/B - local_sum/B), B the global
    batch size. A loss built from such means, f(mean(a), mean(b), ...), has the single-device
    value on every replica, and its gradient on replica r is f'·∂(replica r's share of the means):
    the shares add up over the replicas to exactly the single-device gradient. So a sum or mean
    reduction, λ and the free-bits floor max(mean KL_j, τ) keep their global-batch meaning, with no
    1/replicas factor to forget (averaging per replica and then summing would multiply the
    learning rate by the number of replicas).

    Outside a replica context of more than one replica (one device; evaluation) every mean is the
    plain batch mean, exactly as before this class existed.
    """

    def __init__(self, local_size):
        self.local_size = local_size  # Examples on this replica (may be 0 for a last batch < replicas).
        context = tf.distribute.get_replica_context()
        self.context = context if context is not None and context.num_replicas_in_sync > 1 else None
        self.size, self.offset = local_size, 0
        if self.context is None:
            return
        replica = self.context.replica_id_in_sync_group
        # Every replica's size in one all-reduce (float32: NCCL and the ring all-reduce both take it;
        # exact below 2**24): (replicas,).
        mine = tf.one_hot(replica, self.context.num_replicas_in_sync) * tf.cast(local_size, "float32")
        sizes = tf.cast(self.context.all_reduce(tf.distribute.ReduceOp.SUM, mine), "int32")
        self.size = tf.reduce_sum(sizes)
        self.offset = tf.reduce_sum(sizes[:replica])

    @property
    def replicated(self):
        return self.context is not None

    def mean(self, values):
        """(local batch, ...) -> (...): the mean over the global batch (see the class)."""
        if self.context is None:
            return ops.mean(values, axis=0)
        local = ops.sum(values, axis=0) / ops.cast(self.size, values.dtype)
        total = self.context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(local))
        return local + tf.stop_gradient(total - local)

    def local_mean(self, values):
        """(local batch, ...) -> (...): the mean over this replica's examples (0 when it has none)."""
        if self.context is None:
            return ops.mean(values, axis=0)
        return ops.divide_no_nan(ops.sum(values, axis=0), ops.cast(self.local_size, values.dtype))

    def own_rows(self, global_values):
        """This replica's rows of a (global batch, ...) tensor, in the order the batch was split."""
        if self.context is None:
            return global_values
        return global_values[self.offset:self.offset + self.local_size]


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
        names = ["loss", "reconstruction", "kl", "neg_elbo"]
        if self.likelihood.has_sigma:
            names.append("sigma")
        self.terms_tracker = WeightedMeans(names)
        self.built = True

    def compile(self, optimizer="adam", objective=None, batch_shards=None, **kwargs):
        """Keras's compile, plus the training objective and the number of batch slices."""
        super().compile(optimizer=optimizer, **kwargs)
        if objective is not None:
            self.objective = objective
        if batch_shards is not None:
            self.batch_shards = int(batch_shards)

    def get_compile_config(self):
        config = super().get_compile_config()
        return {**config, "objective": dataclasses.asdict(self.objective), "batch_shards": self.batch_shards} \
            if config else config

    def compile_from_config(self, config):
        if self.from_version_1:
            # Its optimizer state lists log σ first, as the version-1 VAE's own weight; the order cannot be
            # restored onto the new layers. Evaluating needs no optimizer; compile again to train further.
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
        # Keras 3 (checked on 3.15) builds a model under tf.distribute from its first batch averaged over the
        # replicas, which fails when the replicas' slices differ in size (a global batch of 45 on 2 replicas:
        # 23 and 22 digits). This VAE is built at construction; with its optimizer built too (train.Setup
        # builds it in the strategy's scope) there is nothing left to build, so that step is skipped.
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
        """λ times the schedule's multiplier at the optimizer's current step."""
        return self.objective.kl_weight_at(self.optimizer.iterations if self.optimizer is not None else 0)

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
        loss = self.objective.loss(reconstruction, kl_terms, self.num_pixels, self.latent_dim, step, batch.mean)
        kl = ops.sum(kl_terms, axis=1)  # (batch,) true KL, whatever free bits did to the loss
        terms = {"loss": loss, "reconstruction": batch.local_mean(reconstruction), "kl": batch.local_mean(kl),
                 "neg_elbo": batch.local_mean(reconstruction + kl)}
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
        self.optimizer.apply(grads, self.trainable_weights)
        return self._report(terms, ops.shape(x)[0])

    def test_step(self, data):
        x = self._unpack(data)
        return self._report(self.compute_terms(x, training=False), ops.shape(x)[0])

    def get_config(self):
        parts = {name: keras.saving.serialize_keras_object(getattr(self, name))
                 for name in ("encoder", "decoder", "likelihood", "prior")}
        return {**super().get_config(), **parts}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "encoder" not in config:
            return _from_version_1_config(cls, config)
        parts = {name: keras.saving.deserialize_keras_object(config.pop(name))
                 for name in ("encoder", "decoder", "likelihood", "prior")}
        return cls(**parts, **config)

    def load_own_variables(self, store):
        # A version-1 file kept the learned log σ as the VAE's own variable; it now lives in the likelihood.
        if list(store.keys()) and getattr(self.likelihood, "learned_log_sigma", None) is not None:
            self.likelihood.learned_log_sigma.assign(store["0"])
            self.likelihood.restored_by_parent = True
            return
        super().load_own_variables(store)


# The settings a version-1 VAE (before the four-part design) stored in its config.
_VERSION_1_KEYS = ("latent_dim", "likelihood", "reconstruction_reduction", "kl_reduction", "kl_weight", "free_bits",
                   "gaussian_sigma", "kl_schedule", "warmup_steps", "total_steps", "kl_cycles", "kl_ramp_ratio",
                   "dynamic_binarize", "seed", "fast_layers", "batch_shards")


def _from_version_1_config(cls, config):
    """Rebuild a model saved before the four-part design: the same layers (so the weights load), the
    standard normal prior it was trained with, and its objective (used if it is compiled again)."""
    old = {key: config.pop(key) for key in _VERSION_1_KEYS if key in config}
    latent_dim, seed = old.get("latent_dim", 2), old.get("seed")
    likelihood = old.get("likelihood", "bernoulli")
    if likelihood not in likelihoods.LIKELIHOODS:
        raise ValueError(f"Unknown likelihood {likelihood!r} in a saved model; expected one of "
                         f"{', '.join(likelihoods.LIKELIHOODS)}.")
    vae = cls(build_encoder(latent_dim, seed=seed), build_decoder(latent_dim, old.get("fast_layers", False)),
              likelihoods.Gaussian(sigma=old.get("gaussian_sigma", "learned"), name="likelihood")
              if likelihood == "gaussian" else likelihoods.LIKELIHOODS[likelihood](name="likelihood"),
              priors.StandardNormal(latent_dim, name="prior"), **config)
    fields = {f.name for f in dataclasses.fields(Objective)}
    vae.objective = Objective(**{key: value for key, value in old.items() if key in fields})
    vae.batch_shards = int(old.get("batch_shards", 1))
    vae.from_version_1 = True
    return vae


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
