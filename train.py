"""Train the keras.io convolutional VAE with the KL weighting you configure, and say what it did.

    python train.py --config config.yaml [--set loss.reconstruction_reduction=mean ...] [--explain]

Prints the objective as a multiple of the ELBO (the effective β), trains, and
writes into outputs/<run>/: config.yaml, metrics.csv, model.keras, summary.json,
report.html and the figures. --explain prints what the config optimises and stops.

From Python (a notebook cell): `summary = train.run("config.yaml", overrides=["train.epochs=5"])`.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import socket
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's start-up chatter out of the way.

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from vae_kl.choices import likelihoods  # noqa: E402
from vae_kl.data import batches, sources  # noqa: E402
from vae_kl.process import (  # noqa: E402
    atomic,  # noqa: E402
    exits,
    signals,
)
from vae_kl.runs import folders, locks, records  # noqa: E402
from vae_kl.spec import (
    config,  # noqa: E402
    plan,  # noqa: E402
)

# Every module that loads TensorFlow (keras, model, callbacks, evaluate, ...) is imported inside the function
# that needs it: `--help`, `--explain` and every check of the input answer before that import (~4 s).

# batch_shards: 0 uses two slices per CPU thread, at most this many (measured on 2 cores only: two slices
# per core balance the cores' load better than one, docs/performance.md). Other processes busy on the same
# cores do not change the choice: measured, slices still won under them or tied (docs/performance.md).
SHARDS_PER_THREAD, MAX_AUTO_SHARDS = 2, 8
JOIN_SECONDS = 300.0  # How long a multi_worker run waits for the other machines of $TF_CONFIG to connect.


def available_threads():
    """CPU threads this run may use: TF_NUM_INTRAOP_THREADS when set (sweep.py gives each worker its
    share that way), otherwise every core the process may run on."""
    value = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else signals.available_cores()


def resolve_batch_shards(requested):
    """train.batch_shards with 0 resolved: 1 on a GPU or a single CPU thread, else two slices per thread, up to 8."""
    if requested:
        return requested
    import tensorflow as tf  # Deferred: see the note above the imports.

    threads = available_threads()
    if threads == 1 or tf.config.list_physical_devices("GPU"):
        return 1
    return min(SHARDS_PER_THREAD * threads, MAX_AUTO_SHARDS)


def configure_threads(shards):
    """Split the CPU threads between the batch's slices: up to `shards` inter-op threads run the slices'
    ops at the same time, each op on threads // shards intra-op threads (at least one). On 2 cores,
    single-threaded slices running side by side beat whole-batch ops on two threads, which oneDNN's
    convolutions at batch 128 do not use fully (docs/performance.md). Must run before TensorFlow
    starts executing; returns a note when it could not (the defaults then stay: same math, slower)."""
    if shards == 1:
        return None
    import tensorflow as tf  # Deferred: see the note above the imports.

    threads = available_threads()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(min(shards, threads))
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads // shards))
    except RuntimeError:
        return ("NOTE: TensorFlow had started before its thread pools could be split between the "
                f"{shards} batch shards; they keep their defaults (same results, slower).")
    return None


def read_tf_config(environ=None):
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
def ends_process_after(seconds, message):
    """End the process with `error: message` and exit status 4 if the block has not finished after `seconds`.
    For calls into TensorFlow that wait without a timeout of their own; used before any run folder exists."""
    def give_up():
        print(f"error: {message}.", file=sys.stderr, flush=True)
        os._exit(exits.EXIT_ENVIRONMENT)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def check_own_port(environ=None):
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


def make_strategy(distribute):
    """The tf.distribute strategy train.distribute names, or None for one device (no TensorFlow import then).

    mirrored: MirroredStrategy over this machine's GPUs, or, without one, its logical CPU devices
    (one unless the CPU was split with tf.config.set_logical_device_configuration, as the tests do).
    multi_worker: MultiWorkerMirroredStrategy over the cluster in $TF_CONFIG (read_tf_config checks it
    first); it must exist before TensorFlow runs its first op, so Setup creates it before anything else.
    """
    if distribute == "none":
        return None
    import tensorflow as tf  # Deferred: see the note above the imports.

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

    def build_vae(self, precision=None):
        """The configured VAE, compiled with the run's optimizer, objective and batch slices.

        precision: train.precision by default; finish builds a float32 twin to save and evaluate.
        """
        import keras  # Deferred: see the note above the imports.

        import model

        cfg = self.cfg
        precision = precision or cfg.train.precision
        # Under a strategy every variable (weights, optimizer slots, metrics, the noise generator) must be
        # created in its scope, so the optimizer is built here rather than at its first step.
        with self.strategy.scope() if self.strategy else contextlib.nullcontext():
            optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
            if precision == "mixed_float16":  # float16 gradients underflow without a (dynamic) loss scale.
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            vae = model.build_vae(cfg.model, cfg.loss, cfg.train.seed, self.image_shape, precision)
            vae.compile(optimizer=optimizer, objective=self.objective, batch_shards=self.batch_shards,
                        steps_per_execution=self.steps_per_execution)
            if self.strategy:
                vae.optimizer.build(vae.trainable_variables)
        return vae

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


def divergence_advice(cfg):
    """Name the likeliest cause of a NaN loss and the setting to change."""
    if cfg.train.learning_rate > 1e-2:
        return f"train.learning_rate {cfg.train.learning_rate:g} is high for Adam; try 1e-3."
    if likelihoods.FAMILY.get(cfg.loss.likelihood).has_sigma:
        return "a gaussian σ near 0 makes the loss explode; set loss.gaussian_sigma to a larger number or 'optimal'."
    return "lower train.learning_rate (for example 1e-4), or reduce loss.kl_weight."


def resolved(cfg, digits):
    """The config with data.source naming the data actually used (what auto chose), as the run records it."""
    source, path = sources.source_of(digits.name)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=source, path=path))


def start_run(cfg, run_dir, resume, setup, vae):
    """Create the run folder and its first files, or announce the resume."""
    os.makedirs(os.path.join(run_dir, "epochs"), exist_ok=True)
    if not resume:
        atomic.atomic_write_text(os.path.join(run_dir, "config.yaml"),
                               yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
    description = {**setup.description, "likelihood": vae.likelihood.describe(), "prior": vae.prior.describe()}
    records.update_summary(run_dir, status="running", dataset=setup.digits.name,
                        train_examples=len(setup.digits.x_train), validation_examples=len(setup.digits.x_val),
                        epochs_planned=cfg.train.epochs, objective=description, precision=cfg.train.precision,
                        batch_shards=setup.batch_shards,
                        notes=setup.digits.notes + setup.notes, label_names=setup.digits.label_names,
                        distribute=setup.distribution())


def fit(setup, vae, run_dir, history, first_epoch, callbacks=()):
    """Train from first_epoch; returns the recorder (which knows whether training diverged) and the
    phase clock (where the epochs' time went)."""
    from vae_kl.training.callbacks import run_callbacks  # Deferred: see the note above the imports.

    cfg = setup.cfg
    recorder, clock, run_list = run_callbacks(setup, vae, run_dir, history)
    if first_epoch < cfg.train.epochs:
        train_data = batches.train_batches(setup.digits.x_train, cfg.train.batch_size, cfg.train.seed, first_epoch,
                                        cfg.train.epochs, cfg.data.binarize == "dynamic")
        vae.fit(train_data, epochs=cfg.train.epochs, initial_epoch=first_epoch, steps_per_epoch=setup.steps_per_epoch,
                validation_data=batches.validation_batches(setup.digits.x_val), callbacks=[*run_list, *callbacks],
                shuffle=False, verbose=1 if sys.stdout.isatty() else 2)
    return recorder, clock


def finish(setup, vae, run_dir, history, phases):
    """Save the model, evaluate it with β = 1, draw everything, and mark the run complete.

    phases: seconds this process spent so far, by phase (train); the final evaluation's are added.
    """
    import evaluate  # Deferred: see the note above the imports.
    from vae_kl.reports import run_page
    from vae_kl.training.callbacks import log_evaluation

    finish_started = time.perf_counter()
    cfg = setup.cfg
    if cfg.train.precision != "float32":  # Save and evaluate the trained weights in float32 arithmetic.
        trained, vae = vae, setup.build_vae("float32")
        vae.set_weights(trained.get_weights())
        # And Adam's state, so that model.keras holds the optimizer it was trained with (mixed_float16's
        # loss scale aside): unbuilt, it would be saved empty and Keras would warn on every load.
        vae.optimizer.build(vae.trainable_variables)
        adam = getattr(trained.optimizer, "inner_optimizer", trained.optimizer)
        for target, source in zip(vae.optimizer.variables, adam.variables, strict=True):
            target.assign(source)
    atomic.atomic_save(os.path.join(run_dir, "model.keras"), vae.save)
    evaluated = min(len(setup.digits.x_val), cfg.evaluation.max_examples or len(setup.digits.x_val))
    print(f"Evaluating on {evaluated} validation digits (IWAE k={cfg.evaluation.iwae_k}) ...")
    validation, verdict = evaluate.evaluate_run(vae, run_dir, setup.digits.x_val, setup.digits.y_val,
                                                cfg.evaluation.iwae_k, cfg.evaluation.max_examples, history,
                                                len(history) * setup.steps_per_epoch)
    signals.raise_if_interrupted()  # A Ctrl-C that TensorFlow swallowed during the evaluation still counts.
    seconds = [row["seconds"] for row in history]
    timing = {"median_seconds_per_epoch": float(np.median(seconds)) if seconds else None,
              "digits_per_second": len(setup.digits.x_train) / float(np.median(seconds)) if seconds else None,
              "phases_seconds": {**phases, "evaluation": time.perf_counter() - finish_started}}
    log_evaluation(cfg, run_dir, validation, verdict, len(history))
    chosen = geco_result(vae, history, validation) if vae.objective.chooses_beta else None
    rate = capacity_result(vae, history, validation) if vae.objective.target_rate is not None else None
    summary = records.update_summary(run_dir, validation=validation, collapse=verdict, timing=timing, geco=chosen,
                                  capacity=rate, epochs_completed=len(history), status="complete")
    shutil.rmtree(os.path.join(run_dir, folders.STATE_DIR), ignore_errors=True)
    run_page.publish(run_dir, summary)  # report.html from the complete summary, and the short console block.


def geco_result(vae, history, validation):
    """What summary.json records of a GECO run: the β it ended with (the fixed λ to use for this distortion),
    κ, and the reconstruction reached in its last epoch of training and on the validation digits; with a note
    when that β is not the λ for κ: the multiplier still held at its start, at its bound after an epoch
    (history's `beta`), or the reconstruction not settled near κ."""
    import model  # Deferred: see the note above the imports (a trained VAE means it is loaded already).

    goal = vae.objective
    reached = history[-1]["reconstruction"] if history else None
    gap = None if reached is None else 100 * (reached / goal.target_distortion - 1)
    result = {"final_beta": float(vae.beta_in_force()), "final_kl_weight": float(vae.kl_weight_in_force()),
              "target_distortion": goal.target_distortion, "training_reconstruction_nats": reached,
              "validation_reconstruction_nats": validation["reconstruction_nats"], "training_gap_percent": gap}
    bound = math.exp(-model.GECO_LOG_BOUND)  # β's lower bound; the upper is its inverse.
    at_bound = [int(row["epoch"]) for row in history if isinstance(row.get("beta"), (int, float))
                and abs(math.log(row["beta"])) >= model.GECO_LOG_BOUND - 1e-3]
    result["held_to_the_end"] = bool(float(vae.geco_held))
    if result["held_to_the_end"]:
        result["note"] = (f"GECO held β at its start for the whole run (anti-windup, loss.geco_patience): the "
                          f"reconstruction never reached κ and was still improving, so β = {result['final_beta']:.3g} "
                          f"was never chosen; train longer, or raise κ")
    elif at_bound:
        result["note"] = (f"β reached its bound ({bound:.0e} or {1 / bound:.0e}) in epoch {at_bound[0]}: while the "
                          f"model could not yet reach κ the multiplier kept growing (it integrates the constraint), "
                          f"so the β it ended with is not the λ for κ; raise κ, or train longer so that the "
                          f"reconstruction reaches κ early in the run")
    elif gap is not None and abs(gap) > GECO_SETTLED_PERCENT:
        result["note"] = (f"the last epoch's training reconstruction is {gap:+.1f} % from κ: GECO had not settled, "
                          f"so this β is not yet the λ for κ; train longer")
    return result


# GECO's reconstruction within this many percent of κ counts as settled (summary.json says so otherwise).
GECO_SETTLED_PERCENT = 2.0


# A rate and the information it buys differ by more than this (nats) and the report says so: the KL counts
# noise the decoder ignores, the information only what reaches it (docs/evaluation.md).
RATE_INFORMATION_GAP = 1.0


def capacity_result(vae, history, validation):
    """What summary.json records of a capacity run: C, the rate reached (training and validation KL) and
    the information the code carries, with a note when the two differ by more than RATE_INFORMATION_GAP."""
    information = validation.get("mutual_information_nats")
    result = {"target_rate": vae.objective.target_rate, "rate_weight": vae.objective.rate_weight,
              "training_kl_nats": history[-1]["kl"] if history else None,
              "validation_kl_nats": validation["kl_nats"], "information_nats": information}
    if isinstance(information, (int, float)) and validation["kl_nats"] - information > RATE_INFORMATION_GAP:
        result["note"] = (f"a target rate is not a target information: the code's KL is {validation['kl_nats']:.3g} "
                          f"nats but it carries {information:.3g} nats about the digit")
    return result


def train(cfg, callbacks=(), quiet_console=False):
    """Train one configured run end to end. Returns (exit status, run folder).

    quiet_console: import TensorFlow with its C++ start-up lines kept out of the console and written
    into <run>/tensorflow_startup.log instead (quiet.py); the command line does, a notebook need not.
    """
    started = time.perf_counter()
    check_before_tensorflow(cfg)
    if quiet_console:
        from vae_kl.process import quiet  # Deferred: see the note above the imports.

        quiet.import_tensorflow()
    cfg, setup = prepare(cfg)
    run_dir, resume, where = folders.choose_run_dir(cfg.to_dict())
    announce(setup, where)
    vae = build_seeded_vae(setup)
    history = []
    # Taken last before the folder's first files: an interruption before this leaves no folder behind.
    run_lock = locks.lock_run_dir(run_dir)  # Held until train() returns or raises; another process is refused.
    try:
        start_run(cfg, run_dir, resume, setup, vae)
        if quiet_console:
            quiet.save_chatter(os.path.join(run_dir, "tensorflow_startup.log"))
        first_epoch = restore(run_dir, vae, history) if resume else 0
        records.update_summary(run_dir, epochs_completed=first_epoch)
        startup = time.perf_counter() - started
        recorder, clock = fit(setup, vae, run_dir, history, first_epoch, callbacks)
        if recorder.diverged_at:
            return report_divergence(cfg, run_dir, recorder.diverged_at, history), run_dir
        finish(setup, vae, run_dir, history, {"startup": startup, **clock.totals()})
    except KeyboardInterrupt:
        records.update_summary(run_dir, status="interrupted", epochs_completed=len(history))
        print(f"\nInterrupted after {len(history)} finished epochs. Run the same command again to resume.")
        return exits.EXIT_INTERRUPTED, run_dir
    except OSError as error:  # A full disk, say: record it (the lock's reserve makes room); exits.guard says it.
        run_lock.release_reserve()
        with contextlib.suppress(OSError):
            records.update_summary(run_dir, status="failed", error=exits.os_error_text(error),
                                epochs_completed=len(history))
        raise
    finally:  # In a notebook a raised exception's traceback would otherwise hold the lock until it is cleared.
        run_lock.close()
    return 0, run_dir


def prepare(cfg):
    """Load the digits and work out the run on this machine: (cfg naming the data used, Setup)."""
    digits = sources.load_digits(cfg.data, cfg.train.seed)
    cfg = resolved(cfg, digits)
    for note in digits.notes:  # The data's own warnings come before anything that depends on them.
        print(note)
    setup = Setup(cfg, digits)
    thread_note = configure_threads(setup.batch_shards)
    if thread_note:
        setup.notes.append(thread_note)
    return cfg, setup


def announce(setup, where):
    """The start-up lines: the data, how batches run, the objective, every note, what to expect, the folder."""
    digits = setup.digits
    print(f"Data: {digits.name}, {len(digits.x_train)} training and {len(digits.x_val)} validation digits.")
    if setup.batch_shards > 1:
        print(f"Each batch runs as {setup.batch_shards} slices at the same time (train.batch_shards).")
    if setup.distribution_statement():
        print(setup.distribution_statement())
    for line in (setup.statement, *setup.notes, setup.plan.expectation, where):
        print(line)


def build_seeded_vae(setup):
    """The run's compiled VAE, its weights drawn from train.seed (and TensorFlow's ops made deterministic
    when train.deterministic asks)."""
    import keras  # Deferred: see the note above the imports.
    import tensorflow as tf

    keras.utils.set_random_seed(setup.cfg.train.seed)
    if setup.cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    return setup.build_vae()


def restore(run_dir, vae, history):
    """Resume from the run's checkpoint, if it has one: fills history with its epochs' rows and returns
    how many epochs it holds (0 without a checkpoint)."""
    progress = records.load_checkpoint(run_dir, vae)
    if not progress:
        return 0
    history[:] = progress["history"]
    atomic.write_csv(os.path.join(run_dir, "metrics.csv"), history)  # Drop rows of an unfinished epoch.
    print(f"Restored the checkpoint after epoch {progress['epochs_completed']}.")
    return progress["epochs_completed"]


def check_before_tensorflow(cfg):
    """Every check of the input that needs no TensorFlow, so that a bad value is refused in well under a
    second: data.path (sources.peek), the run name, the output folder, $TF_CONFIG. Returns sources.peek's answer."""
    if cfg.train.distribute == "multi_worker":
        check_own_port()
    if cfg.output.run_name is not None:
        folders.check_run_name(cfg.output.run_name)
    shape = sources.peek(cfg.data)
    folders.check_could_write(cfg.output.dir)  # Creates nothing: a refusal of the data later leaves no folder.
    return shape


def report_divergence(cfg, run_dir, where, history):
    """Mark the run diverged, say why and what is kept; returns exit status 3."""
    epoch, step = where
    message = f"Training diverged in epoch {epoch} at step {step}: the loss is NaN or infinite. " + divergence_advice(cfg)
    records.update_summary(run_dir, status="diverged", diverged={"epoch": epoch, "step": step, "message": message},
                        epochs_completed=len(history))
    kept = (f"The checkpoint after epoch {len(history)} and the outputs so far are kept in {run_dir}."
            if history else f"No epoch finished, so there is no checkpoint; see {run_dir}.")
    print(f"error: {message} {kept}", file=sys.stderr)
    return exits.EXIT_DIVERGED


def run(config_or_path=None, overrides=(), callbacks=()):
    """Train one configured run from Python and return its summary.json as a dict.

    Args:
        config_or_path: a YAML file's path, a config.Config, a dict shaped like config.yaml, or None
            for the tutorial's defaults.
        overrides: `section.key=value` strings, as `--set` takes them.
        callbacks: extra keras.callbacks.Callback objects for `fit`.
    Raises config.ConfigError, arrays.DataError or folders.RunFolderError on bad input; a diverged or
    interrupted run returns its summary with that status.
    """
    cfg, _ = load_config(config_or_path, check_list("overrides", overrides, str, "'section.key=value' strings"))
    callbacks = check_list("callbacks", callbacks, None, "keras.callbacks.Callback objects")
    for callback in callbacks:
        if not callable(getattr(callback, "set_model", None)):
            raise config.ConfigError(f"callbacks must hold keras.callbacks.Callback objects, received a "
                                     f"{type(callback).__name__}.")
    _, run_dir = train(cfg, callbacks)
    return atomic.read_json(os.path.join(run_dir, "summary.json"))


def check_list(name, value, kind, what):
    """A list or tuple argument of train.run as a list, or a ConfigError naming what was expected."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or (kind and not all(isinstance(v, kind) for v in value)):
        raise config.ConfigError(f"train.run's {name} must be a list of {what}, received {config.quote(value)}.")
    return list(value)


def load_config(config_or_path, overrides):
    """(Config, notes) from what train.run or the command line was given: a path, a Config, a dict or None.
    A `sweep:` section (sweep.py's) is allowed and noted: train.py trains the base settings once."""
    if isinstance(config_or_path, config.Config):
        for name, kind in config.SECTIONS.items():
            if not isinstance(getattr(config_or_path, name), kind):
                raise config.ConfigError(f"Config.{name} must be a config.{kind.__name__}, received "
                                         f"{config.quote(getattr(config_or_path, name))}.")
        try:
            config_or_path = config_or_path.to_dict()
        except TypeError as error:  # dataclasses.asdict deep-copies: an unpicklable value fails here.
            raise config.ConfigError(f"the Config holds a value that is not a setting ({exits.first_line(error)}).")
    if isinstance(config_or_path, dict):
        raw = config.apply_overrides(config_or_path, overrides)
    elif config_or_path is None or isinstance(config_or_path, (str, os.PathLike)):
        raw = config.load(config_or_path, overrides, extra_sections=("sweep",))[1]
    else:
        raise config.ConfigError(f"train.run takes a YAML path, a config.Config, a dict or None, received "
                                 f"{config.quote(config_or_path)}.")
    cfg = config.from_dict(raw, extra_sections=("sweep",))
    notes = ["NOTE: the config's sweep: section is read by sweep.py; train.py trains its base settings once."] \
        if isinstance(raw, dict) and "sweep" in raw else []
    return cfg, notes


EPILOG = """examples:
  python train.py --config config.yaml
  python train.py --config config.yaml --set loss.reconstruction_reduction=mean
  python train.py --config recipes/keras_io_2020.yaml --explain
  python train.py --config config.yaml --set loss.kl_weight=4 --set train.epochs=10

Every setting is a key of config.yaml, which documents each one (--set section.key=value overrides it):
{keys}

Exit status: 0 done, 2 bad input, 3 diverged, 4 an environment fault (a full disk; resumable), 130 interrupted.
Results: outputs/<run>/report.html; see README.md."""


def parse_args(argv):
    keys = "\n".join(f"  {name}: {', '.join(f.name for f in dataclasses.fields(kind))}"
                     for name, kind in config.SECTIONS.items())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG.format(keys=keys),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config file, e.g. config.yaml or one of recipes/ "
                                                       "(default: the built-in tutorial defaults).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one setting, e.g. --set loss.kl_weight=0.1 (repeatable).")
    parser.add_argument("--explain", action="store_true",
                        help="Print what this config optimises (formula, effective β, β_norm, warnings, what to "
                             "expect) and exit without training or loading TensorFlow.")
    return parser.parse_args(argv)


def explain(args):
    """--explain: print the plan of the configured run, from the config and the data's shape alone."""
    cfg, notes = load_config(args.config, args.overrides)
    shape = check_before_tensorflow(cfg)
    command = " ".join(["python train.py", *([f"--config {args.config}"] if args.config else []),
                        *(f"--set {text}" for text in args.overrides)])
    the_plan = plan.Plan.from_config(cfg, shape.image_shape, shape.train_examples)
    for line in notes + plan.explain(the_plan, shape, command):
        print(line)


def main(argv=None):
    args = parse_args(argv)
    if args.explain:
        return exits.guard(lambda: explain(args))

    def action():
        cfg, notes = load_config(args.config, args.overrides)
        for note in notes:
            print(note)
        return train(cfg, quiet_console=True)[0]

    return exits.guard(action)


if __name__ == "__main__":
    signals.stop_like_ctrl_c()  # Ctrl-C, SIGTERM, or the death of the sweep that started us, stop training.
    exits.exit_now(main())
