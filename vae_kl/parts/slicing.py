"""How one batch is split: into slices that run side by side on the CPU cores (map_shards), and into
replicas under tf.distribute (GlobalBatch). Both leave every number equal to the whole batch's."""

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from keras import ops


def map_shards(fn: Callable[..., Any], inputs: Sequence[tf.Tensor], shards: int) -> list[tf.Tensor]:
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

