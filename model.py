"""The keras.io convolutional VAE: a functional encoder and decoder inside a subclassed Model.

The network is the tutorial's, layer for layer. One change: the decoder's last
layer outputs logits instead of sigmoid probabilities, so the losses can be
computed stably (see losses.py); `VAE.call` and `VAE.decode` apply the mean of
the configured likelihood, which for the Bernoulli is the same sigmoid.
"""

import functools

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

import losses
import schedules
from fast_layers import TapMatmulConv2DTranspose

IMAGE_SHAPE = (28, 28, 1)
NUM_PIXELS = 28 * 28


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


def build_encoder(latent_dim, seed=None):
    """Image (batch, 28, 28, 1) -> [z_mean, z_log_var, z], each (batch, latent_dim)."""
    inputs = keras.Input(shape=IMAGE_SHAPE)
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(inputs)  # (batch, 14, 14, 32)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)  # (batch, 7, 7, 64)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling(seed=seed, name="z")([z_mean, z_log_var])
    return keras.Model(inputs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(latent_dim, fast_layers=False):
    """Latent code (batch, latent_dim) -> logits (batch, 28, 28, 1).

    fast_layers computes the last layer with TapMatmulConv2DTranspose: the same
    function and weights, about 1.5x faster forward+backward on a CPU (docs/performance.md).
    """
    inputs = keras.Input(shape=(latent_dim,))
    x = layers.Dense(7 * 7 * 64, activation="relu")(inputs)
    x = layers.Reshape((7, 7, 64))(x)
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)  # (batch, 14, 14, 64)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)  # (batch, 28, 28, 32)
    last = TapMatmulConv2DTranspose if fast_layers else layers.Conv2DTranspose
    logits = last(1, 3, padding="same", name="logits")(x)  # (batch, 28, 28, 1)
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
    """A VAE whose objective is rec_scale·Σ NLL + λ·m(step)·kl_scale·Σ KL (see losses.py).

    Args:
        latent_dim: size of z.
        likelihood: "bernoulli", "gaussian" or "continuous_bernoulli".
        reconstruction_reduction, kl_reduction: "sum" or "mean" (see losses.training_objective).
        kl_weight: λ, the final weight on the KL term.
        free_bits: τ in nats per latent dimension (0 disables it).
        gaussian_sigma: a fixed σ, "learned" (one trainable log σ) or "optimal" (σ² = batch MSE).
        kl_schedule, warmup_steps, total_steps, kl_cycles, kl_ramp_ratio: see schedules.kl_multiplier.
        dynamic_binarize: resample binary pixels from the grey levels at every training step.
        batch_shards: run the encoder and decoder on this many slices of each batch, which TensorFlow
            executes side by side on the CPU cores (see train.configure_threads). The
            sampling noise is drawn once for the whole batch and the loss is computed on the whole
            batch, so every number equals the unsharded one within float32 rounding.
        seed: seed of the sampling and binarization noise.
        fast_layers: build the decoder from fast_layers (same function and weights, faster). Off by
            default because a model.keras saved before this option existed holds the plain layers.
    """

    def __init__(self, latent_dim=2, likelihood="bernoulli", reconstruction_reduction="sum",
                 kl_reduction="sum", kl_weight=1.0, free_bits=0.0, gaussian_sigma="learned",
                 kl_schedule="constant", warmup_steps=0, total_steps=1, kl_cycles=1,
                 kl_ramp_ratio=0.5, dynamic_binarize=False, seed=None, fast_layers=False, batch_shards=1,
                 **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        self.reconstruction_reduction = reconstruction_reduction
        self.kl_reduction = kl_reduction
        self.kl_weight = float(kl_weight)
        self.free_bits = float(free_bits)
        self.gaussian_sigma = gaussian_sigma
        self.kl_schedule = kl_schedule
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.kl_cycles = int(kl_cycles)
        self.kl_ramp_ratio = float(kl_ramp_ratio)
        self.dynamic_binarize = bool(dynamic_binarize)
        self.seed = seed
        self.fast_layers = bool(fast_layers)
        self.batch_shards = int(batch_shards)
        self.encoder = build_encoder(latent_dim, seed=seed)
        self.decoder = build_decoder(latent_dim, self.fast_layers)
        self.binarize_seed = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self.log_sigma = None
        if likelihood == "gaussian" and gaussian_sigma == "learned":
            self.log_sigma = self.add_weight(shape=(), initializer="zeros", name="log_sigma")
        names = ["loss", "reconstruction", "kl", "neg_elbo"]
        if likelihood == "gaussian":
            names.append("sigma")
        self.terms_tracker = WeightedMeans(names)
        self.built = True

    @property
    def metrics(self):
        return [self.terms_tracker]

    def call(self, inputs, training=False):
        """Reconstruct images from their posterior means: (batch, 28, 28, 1) -> same shape."""
        z_mean, _, _ = self.encoder(inputs, training=training)
        return self.decode(z_mean)

    def decode(self, z):
        """Latent codes (batch, latent_dim) -> mean images (batch, 28, 28, 1)."""
        return losses.decoder_mean(self.decoder(z), self.likelihood)

    def reseed(self, epoch):
        """Make this epoch's noise a function of (seed, epoch) only, so a resumed run draws the same."""
        base = 0 if self.seed is None else self.seed
        for generator, offset in ((self.encoder.get_layer("z").seed_generator, 0), (self.binarize_seed, 1)):
            state = generator.state
            state.assign(np.array([base + 2 * offset + 1, 1_000_003 * (epoch + 1)], dtype=state.dtype))

    def pixel_log_sigma(self, x, logits):
        """log σ of the gaussian likelihood for this batch (a scalar); None for the other likelihoods."""
        if self.likelihood != "gaussian":
            return None
        if self.gaussian_sigma == "learned":
            return self.log_sigma
        if self.gaussian_sigma == "optimal":
            return losses.optimal_log_sigma(x, ops.sigmoid(logits))
        return ops.convert_to_tensor(np.log(float(self.gaussian_sigma)), dtype="float32")

    def kl_weight_in_force(self):
        """λ times the schedule's multiplier at the optimizer's current step."""
        step = self.optimizer.iterations if self.optimizer is not None else 0
        return self.kl_weight * schedules.kl_multiplier(
            step, self.kl_schedule, self.warmup_steps, self.total_steps, self.kl_cycles, self.kl_ramp_ratio)

    @functools.cached_property
    def encoder_moments(self):
        """The encoder up to z_mean and z_log_var (shared layers, no sampling).

        Stored by cached_property in the instance dict, out of Keras's attribute tracking, so it
        adds nothing to the saved model: its layers are the encoder's.
        """
        return keras.Model(self.encoder.inputs, self.encoder.outputs[:2], name="encoder_moments")

    @functools.cached_property
    def decode_logits(self):
        """A compiled function: decoder logits (batch, 28, 28, 1) for codes z (batch, latent_dim).

        Runs the decoder in batch_shards slices side by side, as training does; evaluation decodes
        tens of thousands of codes through it. (Plain eager calls would run one op at a time, on a
        single thread when train.configure_threads has split the cores between slices.)
        """
        def decode(z):
            return map_shards(lambda part: self.decoder(part, training=False), [z], self.batch_shards)[0]
        return tf.function(decode, reduce_retracing=True)

    def forward(self, x, training):
        """z_mean, z_log_var, z (batch, latent_dim) and logits (batch, 28, 28, 1) for images x.

        The encoder and decoder run on batch_shards slices of x: independent ops, which TensorFlow's
        inter-op threads execute at the same time. The noise ε is drawn first, for the whole batch,
        from the encoder's sampling layer, exactly as the unsharded encoder draws it, so the results
        do not depend on batch_shards.
        """
        epsilon = self.encoder.get_layer("z").draw((ops.shape(x)[0], self.latent_dim))

        def one_slice(images, noise):
            z_mean, z_log_var = self.encoder_moments(images, training=training)
            z = reparameterize(z_mean, z_log_var, noise)
            return z_mean, z_log_var, z, self.decoder(z, training=training)

        return map_shards(one_slice, [x, epsilon], self.batch_shards)

    def compute_terms(self, x, training):
        """Forward pass and every loss term for a batch of images x (batch, 28, 28, 1)."""
        z_mean, z_log_var, _, logits = self.forward(x, training)
        log_sigma = self.pixel_log_sigma(x, logits)
        nll = losses.reconstruction_nll(x, logits, self.likelihood, log_sigma)
        reconstruction = losses.sum_over_pixels(nll)  # (batch,) nats per digit
        kl_per_dim = losses.gaussian_kl(z_mean, z_log_var)  # (batch, latent_dim)
        loss = losses.training_objective(reconstruction, kl_per_dim, NUM_PIXELS, self.reconstruction_reduction,
                                         self.kl_reduction, self.kl_weight_in_force(), self.free_bits)
        kl = ops.sum(kl_per_dim, axis=1)  # (batch,) true KL, whatever free bits did to the loss
        terms = {"loss": loss, "reconstruction": ops.mean(reconstruction), "kl": ops.mean(kl),
                 "neg_elbo": ops.mean(reconstruction + kl)}
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
        if self.dynamic_binarize:
            noise = keras.random.uniform(ops.shape(x), seed=self.binarize_seed)
            x = ops.cast(noise < x, x.dtype)
        with tf.GradientTape() as tape:
            terms = self.compute_terms(x, training=True)
        grads = tape.gradient(terms["loss"], self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        return self._report(terms, ops.shape(x)[0])

    def test_step(self, data):
        x = self._unpack(data)
        return self._report(self.compute_terms(x, training=False), ops.shape(x)[0])

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "likelihood": self.likelihood,
                "reconstruction_reduction": self.reconstruction_reduction, "kl_reduction": self.kl_reduction,
                "kl_weight": self.kl_weight, "free_bits": self.free_bits, "gaussian_sigma": self.gaussian_sigma,
                "kl_schedule": self.kl_schedule, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "kl_cycles": self.kl_cycles,
                "kl_ramp_ratio": self.kl_ramp_ratio, "dynamic_binarize": self.dynamic_binarize,
                "seed": self.seed, "fast_layers": self.fast_layers, "batch_shards": self.batch_shards}
