"""Helper of tests/test_distribute.py, run in its own process: the CPU is split into two logical devices,
which TensorFlow allows only before it initialises them (so never inside the shared pytest process).

    python tests/distribute_check.py exact RESULT.json      first-step loss, gradients and trackers
    python tests/distribute_check.py train ARGS...          train.py's main() on the split CPU
    python tests/distribute_check.py both RESULT.json ARGS...   the first, then the second, in one process

`exact` compares, for each case, one VAE on the default device with the same VAE under a two-replica
MirroredStrategy: the same weights, the same generator state (reseed), the same batch. The noise is
the same too: each replica draws the global batch's ε and keeps its own rows (slicing.GlobalBatch), so
every term is compared as computed, noise included, within float32 rounding of a different summation
order. Writes {case: {"loss": [single, replica 0, replica 1], "gradient_error": ..., ...}}.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from vae_kl.process import signals  # noqa: E402
from vae_kl.training import machine  # noqa: E402

REPLICAS = 2
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

# Settings (conftest.build_vae's section__key form) and the global batch size. 45 splits 23 + 22; a batch
# of 1 leaves the second replica empty (the last batch of an epoch can be smaller than the replicas).
# free_bits "straddle" is set between the two units' batch-mean KLs, so one is floored and one is not.
CASES = {
    "sum_sum": ({}, 45),
    "mean_rec_lambda_0.5": ({"loss__reconstruction_reduction": "mean", "loss__kl_weight": 0.5}, 45),
    "kl_mean_lambda_3_free_bits_optimal_sigma": ({"loss__kl_reduction": "mean", "loss__kl_weight": 3.0,
                                                  "loss__free_bits": "straddle", "loss__likelihood": "gaussian",
                                                  "loss__gaussian_sigma": "optimal"}, 45),
    "one_digit_second_replica_empty": ({"loss__free_bits": 0.01}, 1),
}


def images(n):
    import numpy as np

    return np.random.default_rng(5).uniform(size=(n, 28, 28, 1)).astype("float32")


def straddling_free_bits(vae, x):
    """A τ between the two latent units' batch-mean KLs."""
    import numpy as np

    import losses

    z_mean, z_log_var = vae.encoder_moments(x)
    per_unit = np.asarray(losses.gaussian_kl(z_mean, z_log_var)).mean(axis=0)
    return float(per_unit.mean())


def one_case(strategy, settings, batch):
    import keras
    import numpy as np

    from conftest import build_vae, reseed, step_terms

    x = images(batch)
    keras.utils.set_random_seed(0)
    single = build_vae(seed=3, **{k: v for k, v in settings.items() if v != "straddle"})
    if "straddle" in settings.values():
        settings = {**settings, "loss__free_bits": straddling_free_bits(single, x)}
        weights = single.get_weights()
        single = build_vae(seed=3, **settings)
        single.set_weights(weights)
    with strategy.scope():
        mirrored = build_vae(seed=3, **settings)
        mirrored.optimizer.build(mirrored.trainable_variables)
    mirrored.set_weights(single.get_weights())

    reseed(single, 0)
    with tf.GradientTape() as tape:
        terms = step_terms(single, tf.constant(x), training=True)
    grads = tape.gradient(terms["loss"], single.trainable_weights)

    def replica_step(local_x):
        with tf.GradientTape() as tape:
            local = step_terms(mirrored, local_x, training=True)
        shares = tape.gradient(local["loss"], mirrored.trainable_weights)
        # What Keras's optimizer does with them: SUM over the replicas.
        summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, shares)
        return local["loss"], summed

    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(batch))
    reseed(mirrored, 0)
    losses_, summed = strategy.run(tf.function(replica_step), args=(next(iter(dataset)),))
    replica_losses = [float(v) for v in strategy.experimental_local_results(losses_)]
    summed = [np.asarray(strategy.experimental_local_results(g)[0]) for g in summed]
    errors = [float(np.abs(b - np.asarray(a)).max() / (np.abs(np.asarray(a)).max() + 1e-30))
              for a, b in zip(grads, summed)]
    # Trackers: evaluate's numbers are read across the replicas (SUM of on-read variables).
    reseed(single, 0)
    reseed(mirrored, 0)
    plain = single.evaluate(tf.data.Dataset.from_tensor_slices(x).batch(batch), verbose=0, return_dict=True)
    split = mirrored.evaluate(tf.data.Dataset.from_tensor_slices(x).batch(batch), verbose=0, return_dict=True)
    return {"loss": [float(terms["loss"]), *replica_losses], "gradient_error": max(errors),
            "gradient_norm": float(np.sqrt(sum(float(np.sum(np.square(g))) for g in grads))),
            "trackers": {name: [float(plain[name]), float(split[name])] for name in plain},
            "free_bits": settings.get("loss__free_bits", 0.0)}


def keras_build_fix(strategy):
    """Fit, under the strategy, a tiny built model whose global batch of 3 splits 2 + 1 between the replicas:
    once as a plain keras.Model, once as parts.distributed_build.BuiltOnceModel. {name: "fits" or the error}."""
    import keras
    import numpy as np

    from vae_kl.parts.distributed_build import BuiltOnceModel

    class Regression(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

        def train_step(self, data):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(self(data)))
            self.optimizer.apply(tape.gradient(loss, self.trainable_weights), self.trainable_weights)
            return {"loss": loss}

    outcome = {}
    for name, base in (("keras.Model", keras.Model), ("BuiltOnceModel", BuiltOnceModel)):
        with strategy.scope():
            fitted = type(f"Regression_{base.__name__}", (Regression, base), {})()
            fitted(np.zeros((1, 4), "float32"))
            fitted.compile(optimizer="sgd")
            fitted.optimizer.build(fitted.trainable_variables)
        data = tf.data.Dataset.from_tensor_slices(np.ones((6, 4), "float32")).batch(3)
        try:
            fitted.fit(data, epochs=1, verbose=0)
            outcome[name] = "fits"
        except Exception as error:  # Whatever Keras raises: the test reads the message.
            outcome[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return outcome


def exact(result_path):
    strategy = machine.make_strategy("mirrored")
    results = {"replicas": strategy.num_replicas_in_sync, "keras_build": keras_build_fix(strategy)}
    for name, (settings, batch) in CASES.items():
        results[name] = one_case(strategy, settings, batch)
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle)
    return strategy


if __name__ == "__main__":
    if sys.argv[1] in ("exact", "both"):
        strategy = exact(sys.argv[2])
    if sys.argv[1] in ("train", "both"):  # "both": tests/test_distribute.py pays for one TensorFlow start, not two.
        import train

        if sys.argv[1] == "both":  # The run gets the same MirroredStrategy: a second one in one process reuses
            make_strategy = machine.make_strategy  # the first one's collective keys, and their all-reduces collide.
            machine.make_strategy = lambda name: strategy if name == "mirrored" else make_strategy(name)
        signals.stop_like_ctrl_c()
        sys.exit(train.main(sys.argv[2 if sys.argv[1] == "train" else 3:]))
