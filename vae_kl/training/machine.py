"""The run on this machine: CPU threads and batch slices, the tf.distribute strategy and $TF_CONFIG, and
`Setup`, a run's plan with what it adds here (the strategy, the slices, the optimizer, the seeds).

Nothing here loads TensorFlow when imported: `train.py --explain` and every check of the input answer
before that import (about 4 s); each function that needs it imports it.
"""

import contextlib
import json
import math
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Optional

from vae_kl.choices import learning_rates
from vae_kl.process import exits, signals
from vae_kl.spec import config, plan

if TYPE_CHECKING:
    import tensorflow as tf

# batch_shards: 0 uses two slices per CPU thread, at most this many (measured on 2 cores only: two slices
# per core balance the cores' load better than one, docs/performance.md). Other processes busy on the same
# cores do not change the choice: measured, slices still won under them or tied (docs/performance.md).
SHARDS_PER_THREAD, MAX_AUTO_SHARDS = 2, 8
JOIN_SECONDS = 300.0  # How long a multi_worker run waits for the other machines of $TF_CONFIG to connect.


def available_threads() -> int:
    """CPU threads this run may use: TF_NUM_INTRAOP_THREADS when set (sweep.py gives each worker its
    share that way), otherwise every core the process may run on."""
    value = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else signals.available_cores()


def resolve_batch_shards(requested: int) -> int:
    """train.batch_shards with 0 resolved: 1 on a GPU or a single CPU thread, else two slices per thread, up to 8."""
    if requested:
        return requested
    import tensorflow as tf  # Deferred: see the module docstring.

    threads = available_threads()
    if threads == 1 or tf.config.list_physical_devices("GPU"):
        return 1
    return min(SHARDS_PER_THREAD * threads, MAX_AUTO_SHARDS)


def configure_threads(shards: int) -> Optional[str]:
    """Split the CPU threads between the batch's slices: up to `shards` inter-op threads run the slices'
    ops at the same time, each op on threads // shards intra-op threads (at least one). On 2 cores,
    single-threaded slices running side by side beat whole-batch ops on two threads, which oneDNN's
    convolutions at batch 128 do not use fully (docs/performance.md). Must run before TensorFlow
    starts executing; returns a note when it could not (the defaults then stay: same math, slower)."""
    if shards == 1:
        return None
    import tensorflow as tf  # Deferred: see the module docstring.

    threads = available_threads()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(min(shards, threads))
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads // shards))
    except RuntimeError:
        return ("NOTE: TensorFlow had started before its thread pools could be split between the "
                f"{shards} batch shards; they keep their defaults (same results, slower).")
    return None


def read_tf_config(environ: Optional[Mapping[str, str]] = None) -> tuple[str, int, int]:
    """The task this process is in the cluster, from $TF_CONFIG (what MultiWorkerMirroredStrategy reads):
    (task type, index, number of workers). Raises config.ConfigError, one line, when it is missing or invalid."""
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\' (docs/distributed.md)')
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        raise config.ConfigError(f"train.distribute multi_worker reads the cluster from $TF_CONFIG, which is not set; "
                                 f"set it on every machine, {example}.")
    try:
        spec = json.loads(text)
    except ValueError as error:
        raise config.ConfigError(f"$TF_CONFIG is not valid JSON ({error.msg} at character {error.pos + 1}); {example}.")
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not cluster.get("worker"):
        raise config.ConfigError(f"$TF_CONFIG needs a cluster with a non-empty worker list, received "
                                 f"{config.quote(text)}; {example}.")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise config.ConfigError(f"$TF_CONFIG cluster.{kind} must be a list of \"host:port\" strings, received "
                                     f"{config.quote(addresses)}.")
    task = spec.get("task")
    kind, index = (task.get("type"), task.get("index")) if isinstance(task, dict) else (None, None)
    if kind not in ("chief", "worker") or kind not in cluster or isinstance(index, bool) or \
            not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise config.ConfigError(f"$TF_CONFIG task must name this machine: type chief or worker (a key of the "
                                 f"cluster) and an index into its list, received {config.quote(task)}; {example}.")
    return kind, index, len(cluster["worker"]) + len(cluster.get("chief", []))


@contextlib.contextmanager
def ends_process_after(seconds: float, message: str) -> Iterator[None]:
    """End the process with `error: message` and exit status 4 (exits.fail_now) if the block has not finished
    after `seconds`. For calls into TensorFlow that wait without a timeout of their own; used before any run
    folder exists."""
    def give_up():
        exits.fail_now(exits.EnvironmentFault(f"{message}."))

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def check_own_port(environ: Optional[Mapping[str, str]] = None) -> None:
    """Refuse a multi_worker run whose own address in $TF_CONFIG has its port in use: TensorFlow's gRPC
    server would fail to start there with a traceback."""
    kind, index, _ = read_tf_config(environ)
    spec = json.loads((os.environ if environ is None else environ)["TF_CONFIG"])
    address = spec["cluster"][kind][index]
    port = address.rsplit(":", 1)[1]
    with socket.socket() as probe:
        try:
            probe.bind(("", int(port)))
        except (OSError, ValueError) as error:
            raise config.ConfigError(f"port {port} of this machine's $TF_CONFIG address {address} cannot be used "
                                     f"({getattr(error, 'strerror', None) or error}); stop what listens there or "
                                     f"give this task another port.")


def make_strategy(distribute: str) -> Optional["tf.distribute.Strategy"]:
    """The tf.distribute strategy train.distribute names, or None for one device (no TensorFlow import then).

    mirrored: MirroredStrategy over this machine's GPUs, or, without one, its logical CPU devices
    (one unless the CPU was split with tf.config.set_logical_device_configuration, as the tests do).
    multi_worker: MultiWorkerMirroredStrategy over the cluster in $TF_CONFIG (read_tf_config checks it
    first); it must exist before TensorFlow runs its first op, so Setup creates it before anything else.
    """
    if distribute == "none":
        return None
    import tensorflow as tf  # Deferred: see the module docstring.

    if distribute == "multi_worker":
        workers = read_tf_config()[2]
        print(f"Joining the {workers} machines of $TF_CONFIG (waiting at most {JOIN_SECONDS:g} s for them) ...",
              flush=True)
        with ends_process_after(JOIN_SECONDS, f"the machines listed in $TF_CONFIG did not all join within "
                                              f"{JOIN_SECONDS:g} s; start train.py on each of them, with its own "
                                              f"task index, or fix the cluster's addresses"):
            return tf.distribute.MultiWorkerMirroredStrategy()  # Blocks until every worker has connected.
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


class Setup:
    """A run's plan (plan.Plan: step counts, the objective and what it means, the notes) and what it adds
    on the machine: the tf.distribute strategy, the batch slices, and the VAE builder."""

    def __init__(self, cfg, digits):
        self.cfg, self.digits = cfg, digits
        self.strategy = make_strategy(cfg.train.distribute)  # First: before TensorFlow runs anything (multi_worker).
        self.replicas = self.strategy.num_replicas_in_sync if self.strategy else 1
        self.plan = plan.Plan.from_config(cfg, digits.x_train.shape[1:], len(digits.x_train))
        self.notes = self.plan.notes + ([self.plan.execution_note] if self.plan.execution_note else [])
        self.batch_shards = resolve_batch_shards(cfg.train.batch_shards)
        if self.strategy and self.batch_shards > 1:  # Slicing a batch between CPU threads is a one-device option.
            self.notes.append(f"NOTE: train.batch_shards is {self.batch_shards} but train.distribute is "
                              f"{cfg.train.distribute}: each replica runs its local batch whole (batch_shards 1).")
            self.batch_shards = 1
        # The plan's numbers, under the names the rest of training reads.
        self.image_shape, self.num_pixels = self.plan.image_shape, self.plan.num_pixels
        self.steps_per_epoch, self.total_steps = self.plan.steps_per_epoch, self.plan.total_steps
        self.steps_per_execution, self.objective = self.plan.steps_per_execution, self.plan.objective
        self.description, self.statement = self.plan.description, self.plan.statement

    def scope(self):
        """The strategy's scope (every variable of a distributed run must be made in it), else a null context."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def optimizer(self, precision=None):
        """The run's optimizer: Adam with train's β₁, β₂ and ε at the rate of train.lr_schedule (a Keras schedule
        of the step, so a resumed run goes on where it was), with a dynamic loss scale under mixed_float16."""
        import keras  # Only a training makes one (see the module docstring).

        train = self.cfg.train
        rate = learning_rates.FAMILY.get(train.lr_schedule).rate(train, self.steps_per_epoch)
        optimizer = keras.optimizers.Adam(rate, beta_1=train.adam_beta_1, beta_2=train.adam_beta_2,
                                          epsilon=train.adam_epsilon)
        if (precision or self.cfg.train.precision) == "mixed_float16":  # float16 gradients underflow unscaled.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def seed(self):
        """Seed Keras (weights, data order, noise) from train.seed, and make TensorFlow's ops deterministic when
        train.deterministic asks."""
        import keras  # As in optimizer.
        import tensorflow as tf

        keras.utils.set_random_seed(self.cfg.train.seed)
        if self.cfg.train.deterministic:
            tf.config.experimental.enable_op_determinism()

    def distribution(self):
        """What summary.json records under `distribute`: the strategy, its replicas and the batch sizes."""
        devices = list(self.strategy.extended.worker_devices) if self.strategy else []
        return {"strategy": self.cfg.train.distribute, "replicas": self.replicas,
                "global_batch": self.cfg.train.batch_size,
                "per_replica_batch": math.ceil(self.cfg.train.batch_size / self.replicas), "devices": devices}

    def distribution_statement(self):
        """The start-up line about replicas, or None on one device."""
        if not self.strategy:
            return None
        info = self.distribution()
        return (f"Distributed ({info['strategy']}): {info['replicas']} replica(s) on {', '.join(info['devices'])}; "
                f"global batch {info['global_batch']} digits per step (train.batch_size), about "
                f"{info['per_replica_batch']} per replica; the loss and its gradient are the global batch's.")
