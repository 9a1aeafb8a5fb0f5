"""The tf.data pipelines a run trains and validates on (the only part of the data that needs TensorFlow).
"""

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf



def train_batches(x: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int,
                  dynamic_binarize: bool = False) -> "tf.data.Dataset":
    """A tf.data pipeline of training batches for epochs first_epoch..epochs-1.

    Each epoch's order, and with dynamic_binarize each batch's binary pixels, depend only on
    (seed, epoch, batch), so a resumed run sees the same batches an uninterrupted one would.
    """
    import tensorflow as tf  # Only training needs TensorFlow here; loading data does not.

    # A variable, not a constant: tf.data would copy a captured constant into its graph, which
    # takes seconds for 60,000 digits; a variable is captured by reference. (N, H, W, C)
    with tf.device("/cpu:0"):
        images = tf.Variable(x, trainable=False, name="training_digits")

    def gather(epoch, step, index):
        batch = tf.gather(images, index)
        if not dynamic_binarize:
            return batch
        noise = tf.random.stateless_uniform(tf.shape(batch), seed=tf.stack([seed * 100003 + epoch, step]))
        return tf.cast(noise < batch, batch.dtype)

    def one_epoch(epoch):
        order = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed * 100003 + epoch)
        return order.batch(batch_size).enumerate().map(lambda step, index: gather(epoch, step, index))

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def validation_batches(x: np.ndarray, batch_size: int = 512) -> "tf.data.Dataset":
    import tensorflow as tf  # See train_batches.

    return tf.data.Dataset.from_tensor_slices(x).batch(batch_size).prefetch(tf.data.AUTOTUNE)
