"""Train the keras.io convolutional VAE with the KL weighting you configure, and say what it did.

    python train.py --config config.yaml [--set loss.reconstruction_reduction=mean ...]

Prints the objective as a multiple of the ELBO (the effective β), trains, and
writes into outputs/<run>/: config.yaml, metrics.csv, model.keras, summary.json
and the figures. Bad input exits with status 2 and a one-line message.
"""

import argparse
import math
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's start-up chatter out of the way.

import numpy as np  # noqa: E402
import yaml  # noqa: E402

import config  # noqa: E402
import runs  # noqa: E402
from data import DataError  # noqa: E402

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130
# batch_shards: 0 uses two slices per CPU thread, at most this many (measured on 2 cores only: two slices
# per core balance the cores' load better than one, docs/performance.md).
SHARDS_PER_THREAD, MAX_AUTO_SHARDS = 2, 8


def exit_on_user_error(action):
    """Run action(); turn a user error into one line on stderr and exit status 2."""
    try:
        return action() or 0
    except (config.ConfigError, DataError, runs.RunFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


def available_threads():
    """CPU threads this run may use: TF_NUM_INTRAOP_THREADS when set (sweep.py gives each worker its
    share that way), otherwise every core the process may run on."""
    value = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else runs.available_cores()


def resolve_batch_shards(requested):
    """train.batch_shards with 0 resolved: 1 on a GPU or a single CPU thread, else two slices per thread, up to 8."""
    if requested:
        return requested
    import tensorflow as tf

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
    import tensorflow as tf

    threads = available_threads()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(min(shards, threads))
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads // shards))
    except RuntimeError:
        return ("NOTE: TensorFlow had started before its thread pools could be split between the "
                f"{shards} batch shards; they keep their defaults (same results, slower).")
    return None


class Setup:
    """What train.py derives from the config and the data: step counts, the resolved λ, the objective."""

    def __init__(self, cfg, digits):
        import objective

        from model import NUM_PIXELS

        self.cfg, self.digits = cfg, digits
        loss, train = cfg.loss, cfg.train
        self.batch_shards = resolve_batch_shards(train.batch_shards)
        self.steps_per_epoch = math.ceil(len(digits.x_train) / train.batch_size)
        self.total_steps = self.steps_per_epoch * train.epochs
        per_unit = self.steps_per_epoch if loss.kl_warmup_unit == "epochs" else 1
        self.warmup_steps = loss.kl_warmup * per_unit
        self.kl_weight = objective.resolve_kl_weight(loss.kl_weight, loss.kl_weight_norm, loss.reconstruction_reduction,
                                                     loss.kl_reduction, cfg.model.latent_dim, NUM_PIXELS)
        sigma = loss.gaussian_sigma if isinstance(loss.gaussian_sigma, float) else None
        self.objective = objective.describe(loss.reconstruction_reduction, loss.kl_reduction, self.kl_weight,
                                            cfg.model.latent_dim, NUM_PIXELS, loss.likelihood, sigma)
        self.statement = objective.statement(self.objective, cfg.model.latent_dim, NUM_PIXELS)
        self.notes = digits.notes + objective.teaching_warnings(
            loss, cfg.data.binarize, cfg.model.latent_dim, NUM_PIXELS, self.total_steps, self.warmup_steps)
        # Keras runs whole executions even across an epoch's end, which would shift later epochs'
        # batches; so use the largest divisor of the steps per epoch up to the configured number.
        limit = min(train.steps_per_execution, self.steps_per_epoch)
        self.steps_per_execution = max(k for k in range(1, limit + 1) if self.steps_per_epoch % k == 0)
        if self.steps_per_execution != train.steps_per_execution:
            self.notes.append(f"NOTE: running {self.steps_per_execution} steps per execution (the largest divisor "
                              f"of the {self.steps_per_epoch} steps per epoch up to train.steps_per_execution "
                              f"{train.steps_per_execution}); same math, different speed.")

    def build_vae(self):
        import keras

        from model import VAE

        cfg = self.cfg
        vae = VAE(latent_dim=cfg.model.latent_dim, likelihood=cfg.loss.likelihood,
                  reconstruction_reduction=cfg.loss.reconstruction_reduction, kl_reduction=cfg.loss.kl_reduction,
                  kl_weight=self.kl_weight, free_bits=cfg.loss.free_bits, gaussian_sigma=cfg.loss.gaussian_sigma,
                  kl_schedule=cfg.loss.kl_schedule, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                  kl_cycles=cfg.loss.kl_cycles, kl_ramp_ratio=cfg.loss.kl_ramp_ratio,
                  dynamic_binarize=cfg.data.binarize == "dynamic", seed=cfg.train.seed,
                  fast_layers=cfg.model.fast_layers, batch_shards=self.batch_shards)
        vae.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
                    steps_per_execution=self.steps_per_execution)
        return vae


def make_train_dataset(x, batch_size, seed, first_epoch, epochs):
    """Batches for epochs first_epoch..epochs-1; each epoch's order depends only on (seed, epoch),
    so a resumed run sees the same batches an uninterrupted one would."""
    import tensorflow as tf

    # A variable, not a constant: tf.data would copy a captured constant into its graph, which
    # takes seconds for 60,000 digits; a variable is captured by reference. (N, 28, 28, 1)
    with tf.device("/cpu:0"):
        images = tf.Variable(x, trainable=False, name="training_digits")

    def one_epoch(epoch):
        order = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed * 100003 + epoch)
        return order.batch(batch_size)

    batches = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    return batches.map(lambda index: tf.gather(images, index)).prefetch(tf.data.AUTOTUNE)


def make_val_dataset(x, batch_size):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(x).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def update_summary(run_dir, **fields):
    summary = runs.read_json(os.path.join(run_dir, "summary.json")) or {}
    summary.update(fields)
    runs.atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def divergence_advice(cfg):
    """Name the likeliest cause of a NaN loss and the setting to change."""
    if cfg.train.learning_rate > 1e-2:
        return f"train.learning_rate {cfg.train.learning_rate:g} is high for Adam; try 1e-3."
    if cfg.loss.likelihood == "gaussian":
        return "a gaussian σ near 0 makes the loss explode; set loss.gaussian_sigma to a larger number or 'optimal'."
    return "lower train.learning_rate (for example 1e-4), or reduce loss.kl_weight."


def make_recorder(setup, run_dir, history):
    """A Keras callback that checkpoints, logs and draws after every epoch, and stops on NaN."""
    import keras

    import plots

    cfg, digits = setup.cfg, setup.digits
    grid_index = plots.pick_one_per_class(digits.y_val)

    class RunRecorder(keras.callbacks.Callback):
        diverged_at = None

        def on_epoch_begin(self, epoch, logs=None):
            self.model.reseed(epoch)
            self.started = time.time()

        def on_train_batch_end(self, batch, logs=None):
            if logs and not math.isfinite(float(logs["loss"])):
                self.diverged_at = (len(history) + 1, batch + 1)
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            values = {k: float(v) for k, v in (logs or {}).items()}
            if self.diverged_at or not all(math.isfinite(v) for v in values.values()):
                self.diverged_at = self.diverged_at or (epoch + 1, setup.steps_per_epoch)
                self.model.stop_training = True
                return
            row = {"epoch": epoch + 1, **values, "kl_weight": float(self.model.kl_weight_in_force()),
                   "seconds": time.time() - self.started}
            if cfg.output.per_epoch_images:
                x = digits.x_val[grid_index]
                plots.reconstructions(x, self.model.predict(x, verbose=0), digits.y_val[grid_index],
                                      os.path.join(run_dir, "epochs", f"reconstructions_epoch_{epoch + 1:03d}.png"),
                                      f"Epoch {epoch + 1}: -ELBO {row['val_neg_elbo']:.1f}, KL {row['val_kl']:.3f} nats")
            # The checkpoint is the commit point: a kill before it redoes this epoch, after it skips it.
            history.append(row)
            runs.save_checkpoint(run_dir, self.model, {"epochs_completed": epoch + 1, "history": history})
            runs.write_csv(os.path.join(run_dir, "metrics.csv"), history)
            update_summary(run_dir, epochs_completed=epoch + 1)

    return RunRecorder()


def start_run(cfg, run_dir, resume, setup):
    """Create the run folder and its first files, or announce the resume."""
    os.makedirs(os.path.join(run_dir, "epochs"), exist_ok=True)
    if not resume:
        runs.atomic_write_text(os.path.join(run_dir, "config.yaml"),
                               yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
    update_summary(run_dir, status="running", dataset=setup.digits.name,
                   train_examples=len(setup.digits.x_train), validation_examples=len(setup.digits.x_val),
                   epochs_planned=cfg.train.epochs, epochs_completed=0, objective=setup.objective,
                   notes=setup.notes)


def fit(setup, vae, run_dir, history, first_epoch):
    """Train from first_epoch; returns the recorder (which knows whether training diverged)."""
    cfg = setup.cfg
    recorder = make_recorder(setup, run_dir, history)
    if first_epoch < cfg.train.epochs:
        train_data = make_train_dataset(setup.digits.x_train, cfg.train.batch_size, cfg.train.seed,
                                        first_epoch, cfg.train.epochs)
        vae.fit(train_data, epochs=cfg.train.epochs, initial_epoch=first_epoch, steps_per_epoch=setup.steps_per_epoch,
                validation_data=make_val_dataset(setup.digits.x_val, 512), callbacks=[recorder], shuffle=False,
                verbose=1 if sys.stdout.isatty() else 2)
    return recorder


def finish(setup, vae, run_dir, history):
    """Save the model, evaluate it with β = 1, draw everything, and mark the run complete."""
    import evaluate
    import plots
    import schedules

    cfg = setup.cfg
    runs.atomic_save(os.path.join(run_dir, "model.keras"), vae.save)
    plots.loss_curves(history, os.path.join(run_dir, "loss_curves.png"))
    steps = np.linspace(0, setup.total_steps, min(setup.total_steps, 2000) + 1)
    weights = setup.kl_weight * np.asarray(schedules.kl_multiplier(
        steps, cfg.loss.kl_schedule, setup.warmup_steps, setup.total_steps, cfg.loss.kl_cycles, cfg.loss.kl_ramp_ratio))
    plots.kl_schedule(steps, weights, [row["epoch"] * setup.steps_per_epoch for row in history],
                      [row["kl_weight"] for row in history], os.path.join(run_dir, "kl_schedule.png"))
    print(f"Evaluating on {len(setup.digits.x_val)} validation digits (IWAE k={cfg.evaluation.iwae_k}) ...")
    validation, verdict = evaluate.evaluate_run(vae, run_dir, setup.digits.x_val, setup.digits.y_val,
                                                cfg.evaluation.iwae_k, cfg.evaluation.max_examples, history)
    seconds = [row["seconds"] for row in history]
    timing = {"median_seconds_per_epoch": float(np.median(seconds)) if seconds else None,
              "digits_per_second": len(setup.digits.x_train) / float(np.median(seconds)) if seconds else None}
    update_summary(run_dir, validation=validation, collapse=verdict, timing=timing,
                   epochs_completed=len(history), status="complete")
    shutil.rmtree(os.path.join(run_dir, runs.STATE_DIR), ignore_errors=True)
    print_result(validation, verdict, run_dir)


def print_result(validation, verdict, run_dir):
    print(f"Validation (β = 1): -ELBO {validation['neg_elbo_nats']:.2f} nats/digit "
          f"= reconstruction {validation['reconstruction_nats']:.2f} + KL {validation['kl_nats']:.4f}; "
          f"IWAE (k={validation['iwae_k']}) {validation['iwae_nll_nats']:.2f} nats; "
          f"KL per dim {[round(v, 3) for v in validation['kl_per_dim_nats']]}; "
          f"active units {validation['active_units']}/{validation['latent_dim']}.")
    print(("POSTERIOR COLLAPSE. " if verdict["detected"] else "") + f"Verdict: {verdict['reason']}")
    print(f"Outputs in {run_dir}")


def train(cfg):
    """Train one configured run end to end. Returns the exit status."""
    import data

    digits = data.load_digits(cfg.data.source, cfg.data.path, cfg.data.limit, cfg.data.train_on,
                              cfg.data.binarize, cfg.train.seed)
    setup = Setup(cfg, digits)
    thread_note = configure_threads(setup.batch_shards)
    if thread_note:
        setup.notes.append(thread_note)
    run_dir, resume, where = runs.choose_run_dir(cfg.to_dict())
    print(f"Data: {digits.name}, {len(digits.x_train)} training and {len(digits.x_val)} validation digits.")
    if setup.batch_shards > 1:
        print(f"Each batch runs as {setup.batch_shards} slices at the same time (train.batch_shards).")
    print(setup.statement)
    for note in setup.notes:
        print(note)
    print(where)
    run_lock = runs.lock_run_dir(run_dir)  # noqa: F841  Held until train() returns; another process is refused.
    start_run(cfg, run_dir, resume, setup)

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    vae = setup.build_vae()
    history, first_epoch = [], 0
    progress = runs.load_checkpoint(run_dir, vae) if resume else None
    if progress:
        history, first_epoch = progress["history"], progress["epochs_completed"]
        runs.write_csv(os.path.join(run_dir, "metrics.csv"), history)  # Drop rows of an unfinished epoch.
        print(f"Restored the checkpoint after epoch {first_epoch}.")
    try:
        recorder = fit(setup, vae, run_dir, history, first_epoch)
    except KeyboardInterrupt:
        update_summary(run_dir, status="interrupted", epochs_completed=len(history))
        print(f"\nInterrupted after {len(history)} finished epochs. Run the same command again to resume.")
        return EXIT_INTERRUPTED
    if recorder.diverged_at:
        epoch, step = recorder.diverged_at
        message = f"Training diverged in epoch {epoch} at step {step}: the loss is NaN or infinite. " + divergence_advice(cfg)
        update_summary(run_dir, status="diverged", diverged={"epoch": epoch, "step": step, "message": message},
                       epochs_completed=len(history))
        kept = (f"The checkpoint after epoch {len(history)} and the outputs so far are kept in {run_dir}."
                if history else f"No epoch finished, so there is no checkpoint; see {run_dir}.")
        print(f"error: {message} {kept}", file=sys.stderr)
        return EXIT_DIVERGED
    finish(setup, vae, run_dir, history)
    return 0


def reevaluate(run_dir, iwae_k=None):
    """evaluate.py's work: reload a finished run's model and data, recompute, update summary.json."""
    import keras

    import data
    import evaluate
    import model  # noqa: F401  Registers the VAE classes for loading.

    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    model_path = os.path.join(run_dir, "model.keras")
    if summary is None or not os.path.exists(model_path):
        raise runs.RunFolderError(f"'{run_dir}' holds no finished run (summary.json and model.keras); "
                                  f"pass a folder written by train.py.")
    cfg, _ = config.load(os.path.join(run_dir, "config.yaml"))
    source, path = summary["dataset"], None
    if source.startswith("npz:"):
        source, path = "npz", source[4:]
    digits = data.load_digits(source, path, cfg.data.limit, cfg.data.train_on, cfg.data.binarize, cfg.train.seed)
    vae = keras.saving.load_model(model_path, safe_mode=True)
    history = runs.read_csv_rows(os.path.join(run_dir, "metrics.csv"))
    k = iwae_k or cfg.evaluation.iwae_k
    validation, verdict = evaluate.evaluate_run(vae, run_dir, digits.x_val, digits.y_val, k,
                                                cfg.evaluation.max_examples, history)
    update_summary(run_dir, validation=validation, collapse=verdict)
    print_result(validation, verdict, run_dir)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML config file (default: built-in tutorial defaults).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one setting, e.g. --set loss.kl_weight=0.1 (repeatable).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return exit_on_user_error(lambda: train(config.load(args.config, args.overrides)[0]))


if __name__ == "__main__":
    runs.stop_like_ctrl_c()  # SIGTERM, or the death of the sweep that started us, acts as Ctrl-C.
    sys.exit(main())
