"""A trained VAE's codes and decodings for many digits at once, in batches of a bounded size, as numpy.

The evaluation and the per-epoch figures encode and decode thousands of digits; these helpers run the
encoder's moments in batches and the decoder on the VAE's batch slices (as training does), never more
than DECODE_BATCH codes per call, whatever the number of digits or importance samples.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from keras import ops

from vae_kl.parts.slicing import map_shards

DECODE_BATCH = 1024  # Latent codes decoded per call, whatever k and the number of digits are; bounds memory.


def decode_logits(vae: Any, z: np.ndarray) -> np.ndarray:
    """Decoder logits (n, H, W, C) for codes z (n, latent_dim), as numpy, through sliced_decoder."""
    return sliced_decoder(vae)(z).numpy()


def sliced_decoder(vae: Any) -> Callable[[Any], tf.Tensor]:
    """The VAE's decoder as a compiled function running on its batch_shards slices side by side, as training
    does: plain eager calls would run one op at a time, on a single thread when the cores are split between
    slices (vae_kl.training.machine). Made once per model and kept in its __dict__, outside Keras's tracking."""
    if "_sliced_decoder" not in vae.__dict__:
        def decode(z):
            return map_shards(lambda part: vae.decoder(part, training=False), [z], vae.batch_shards)[0]
        vae.__dict__["_sliced_decoder"] = tf.function(decode, reduce_retracing=True)
    return vae.__dict__["_sliced_decoder"]


def encode(vae: Any, x: np.ndarray) -> list[np.ndarray]:
    """Posterior moments for many digits, in batches: z_mean, z_log_var as (n, latent_dim) float32 arrays."""
    parts = [vae.encode(x[i:i + DECODE_BATCH]) for i in range(0, len(x), DECODE_BATCH)]
    return [np.concatenate([np.asarray(p[j], dtype="float32") for p in parts]) for j in range(2)]


def reconstruct(vae: Any, x: np.ndarray) -> np.ndarray:
    """Mean images (n, H, W, C) for images x, decoded from their posterior means: what predict gives, without
    its per-call set-up (the grids drawn after every epoch use it)."""
    z_mean, _ = encode(vae, x)
    return np.asarray(vae.likelihood.mean(ops.cast(decode_logits(vae, z_mean), "float32")))
