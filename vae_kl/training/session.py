"""One training run's life around its fit, for train.py: the checks before TensorFlow, the set-up on this
machine, the run folder (locked, its first files, the resume), and the end (model.keras, the β = 1
evaluation, summary.json complete); a Ctrl-C, a full disk or a divergence is recorded in summary.json.

Nothing here loads TensorFlow when imported (`--help`, `--explain`); what needs it imports it inside.
"""

import contextlib
import dataclasses
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from typing import Any, Optional, Union

import numpy as np
import yaml

from vae_kl.choices import likelihoods
from vae_kl.data import downloads, sources
from vae_kl.process import atomic, exits
from vae_kl.runs import folders, locks, records
from vae_kl.spec import config, plan
from vae_kl.tracking import mlflow_log
from vae_kl.training import machine


def check_before_tensorflow(cfg: config.Config) -> sources.DataShape:
    """Every check of the input that needs no TensorFlow, so that a bad value is refused in well under a
    second: data.path (sources.peek), a keras.datasets download, the run name, GECO's κ, the output folder,
    $TF_CONFIG. Returns sources.peek's answer."""
    if cfg.train.distribute == "multi_worker":
        machine.check_own_port()
    if cfg.output.run_name is not None:
        folders.check_run_name(cfg.output.run_name)
    shape = sources.peek(cfg.data)
    if cfg.data.source in downloads.KERAS_CACHE_GLOBS:  # mnist, fashion_mnist, cifar10: the download, probed.
        downloads.check_download(cfg.data.source)
    plan.check_target_distortion(cfg.loss, math.prod(shape.image_shape))  # GECO's κ against the likelihood's floor.
    folders.check_could_write(cfg.output.dir)  # Creates nothing: a refusal of the data later leaves no folder.
    if cfg.output.tracking == "mlflow":
        mlflow_log.check(cfg.output.dir)
    return shape


def prepare(cfg: config.Config, digits: sources.Digits) -> machine.Setup:
    """The run on this machine (machine.Setup) for the digits loaded, its config naming the data actually used
    (what auto chose), as the run records it; prints the data's own warnings first."""
    source, path = sources.source_of(digits.name)
    for note in digits.notes:
        print(note)
    setup = machine.Setup(dataclasses.replace(cfg, data=cfg.data.replace(source=source, path=path)), digits)
    thread_note = machine.configure_threads(setup.batch_shards)
    if thread_note:
        setup.notes.append(thread_note)
    return setup


def announce(setup: machine.Setup, where: str) -> None:
    """The start-up lines: the data, how batches run, the objective, every note, what to expect, the folder."""
    digits = setup.digits
    print(f"Data: {digits.name}, {len(digits.x_train)} training and {len(digits.x_val)} validation digits.")
    if setup.batch_shards > 1:
        print(f"Each batch runs as {setup.batch_shards} slices at the same time (train.batch_shards).")
    if setup.distribution_statement():
        print(setup.distribution_statement())
    for line in (setup.statement, *setup.notes, setup.plan.expectation, where):
        print(line)


class RunFolder:
    """Where a run goes (folders.choose_run_dir: a new folder, or the unfinished one it resumes) and, while
    `held`, its lock. `status` is the exit status the run ended with."""

    def __init__(self, setup: machine.Setup):
        self.setup = setup
        self.dir, self.resume, self.where = folders.choose_run_dir(setup.cfg.to_dict())
        self.status, self.tracker = 0, None

    @contextlib.contextmanager
    def held(self, vae, quiet_console: bool = False):
        """Lock the folder, write its first files (or restore its checkpoint) and yield the history, the rows of
        the epochs finished so far. A Ctrl-C inside is recorded (status interrupted, resumable) and ends the block
        with status 130; a fault of the machine (OSError: a full disk) is recorded as failed and raised."""
        history = []
        # Taken last before the folder's first files: an interruption before this leaves no folder behind.
        lock = locks.lock_run_dir(self.dir)  # Another process is refused while this one holds it.
        try:
            self.start(vae)
            if quiet_console:
                from vae_kl.process import quiet  # Loaded with TensorFlow already.

                quiet.save_chatter(os.path.join(self.dir, "tensorflow_startup.log"))
            if self.resume:
                restore(self.dir, vae, history)
            records.update_summary(self.dir, epochs_completed=len(history))
            self.track(history)
            yield history
        except KeyboardInterrupt:
            records.update_summary(self.dir, status="interrupted", epochs_completed=len(history))
            print(f"\nInterrupted after {len(history)} finished epochs. Run the same command again to resume.")
            self.status = exits.EXIT_INTERRUPTED
        except OSError as error:  # A full disk, say: record it (the lock's reserve makes room); exits.guard says it.
            lock.release_reserve()
            with contextlib.suppress(OSError):
                records.update_summary(self.dir, status="failed", error=exits.os_error_text(error),
                                       epochs_completed=len(history))
            raise
        finally:  # In a notebook a raised exception's traceback would otherwise hold the lock until it is cleared.
            if self.tracker is not None:
                self.tracker.end(atomic.read_json(os.path.join(self.dir, "summary.json")) or {}, self.dir)
            lock.close()

    def track(self, history: list) -> None:
        """With output.tracking: mlflow, open the run's MLflow run (the one summary.json names when resuming) and
        log what the store lacks of the epochs so far; the epochs to come are logged by callbacks.TrackedEpochs."""
        if self.setup.cfg.output.tracking != "mlflow":
            return
        earlier = (atomic.read_json(os.path.join(self.dir, "summary.json")) or {}).get("tracking") or {}
        self.tracker = mlflow_log.Tracker(self.setup.cfg.output.dir, os.path.basename(self.dir),
                                          os.environ.get(mlflow_log.PARENT_VARIABLE))
        run_id = self.tracker.start(self.setup.cfg.to_dict(), earlier.get("mlflow_run_id"), history)
        if run_id:
            records.update_summary(self.dir, tracking={"mlflow_run_id": run_id, "mlflow_tracking_uri": self.tracker.uri,
                                                       "mlflow_experiment": mlflow_log.experiment_name()})

    def start(self, vae) -> None:
        """Create the run folder and its first files (config.yaml, summary.json running)."""
        setup, cfg = self.setup, self.setup.cfg
        os.makedirs(os.path.join(self.dir, "epochs"), exist_ok=True)
        if not self.resume:
            atomic.atomic_write_text(os.path.join(self.dir, "config.yaml"),
                                     yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
        description = {**setup.description, "likelihood": vae.likelihood.describe(), "prior": vae.prior.describe()}
        records.update_summary(self.dir, status="running", dataset=setup.digits.name,
                               train_examples=len(setup.digits.x_train), validation_examples=len(setup.digits.x_val),
                               epochs_planned=cfg.train.epochs, objective=description, precision=cfg.train.precision,
                               batch_shards=setup.batch_shards, notes=setup.digits.notes + setup.notes,
                               label_names=setup.digits.label_names, distribute=setup.distribution())

    def diverged(self, where: tuple, history: list) -> int:
        """Mark the run diverged, say why and what is kept; returns exit status 3."""
        epoch, step = where
        message = (f"Training diverged in epoch {epoch} at step {step}: the loss is NaN or infinite. "
                   + divergence_advice(self.setup.cfg))
        records.update_summary(self.dir, status="diverged", epochs_completed=len(history),
                               diverged={"epoch": epoch, "step": step, "message": message})
        kept = (f"The checkpoint after epoch {len(history)} and the outputs so far are kept in {self.dir}."
                if history else f"No epoch finished, so there is no checkpoint; see {self.dir}.")
        print(f"error: {message} {kept}", file=sys.stderr)
        self.status = exits.EXIT_DIVERGED
        return self.status


def restore(run_dir: str, vae: Any, history: list) -> None:
    """Resume from the run's checkpoint, if it has one: fills history with its epochs' rows."""
    progress = records.load_checkpoint(run_dir, vae)
    if not progress:
        return
    history[:] = progress["history"]
    atomic.write_csv(os.path.join(run_dir, "metrics.csv"), history)  # Drop rows of an unfinished epoch.
    print(f"Restored the checkpoint after epoch {progress['epochs_completed']}.")


def divergence_advice(cfg: config.Config) -> str:
    """Name the likeliest cause of a NaN loss and the setting to change."""
    if cfg.train.learning_rate > 1e-2:
        return f"train.learning_rate {cfg.train.learning_rate:g} is high for Adam; try 1e-3."
    chosen = likelihoods.FAMILY.get(cfg.loss.likelihood)
    return chosen.divergence_advice(chosen.options(cfg.loss)) or \
        "lower train.learning_rate (for example 1e-4), or reduce loss.kl_weight."


def in_float32(setup: machine.Setup, vae: Any, build_vae: Callable[[machine.Setup, str], Any]) -> Any:
    """The trained VAE with float32 arithmetic, to save and evaluate: itself, or under a mixed precision a float32
    twin (build_vae(setup, "float32")) holding its weights and Adam's state (mixed_float16's loss scale aside), so
    that model.keras holds the optimizer it was trained with (unbuilt, Keras would warn on every load)."""
    if setup.cfg.train.precision == "float32":
        return vae
    twin = build_vae(setup, "float32")
    twin.set_weights(vae.get_weights())
    twin.optimizer.build(twin.trainable_variables)
    adam = getattr(vae.optimizer, "inner_optimizer", vae.optimizer)
    for target, source in zip(twin.optimizer.variables, adam.variables, strict=True):
        target.assign(source)
    return twin


def save_model(run_dir: str, vae: Any) -> None:
    atomic.atomic_save(os.path.join(run_dir, "model.keras"), vae.save)


def complete(setup: machine.Setup, vae: Any, run_dir: str, history: list, results: tuple, phases: dict) -> dict:
    """Mark the run complete with its β = 1 results (validation, verdict), timings, what GECO or capacity reached,
    and its TensorBoard evaluation; drop the checkpoint. Returns the summary. phases: seconds by phase."""
    from vae_kl.training import callbacks, targets  # Loaded with TensorFlow already.

    validation, verdict = results
    seconds = [row["seconds"] for row in history]
    median = float(np.median(seconds)) if seconds else None
    timing = {"median_seconds_per_epoch": median,
              "digits_per_second": len(setup.digits.x_train) / median if seconds else None,
              "phases_seconds": phases}
    callbacks.log_evaluation(setup.cfg, run_dir, validation, verdict, len(history))
    goal = vae.objective
    summary = records.update_summary(
        run_dir, validation=validation, collapse=verdict, timing=timing, epochs_completed=len(history),
        geco=targets.geco_result(vae, history, validation) if goal.chooses_beta else None,
        capacity=targets.capacity_result(vae, history, validation) if goal.target_rate is not None else None,
        status="complete")
    shutil.rmtree(os.path.join(run_dir, folders.STATE_DIR), ignore_errors=True)
    return summary


def check_list(name: str, value: Any, kind: Optional[type], what: str) -> list:
    """A list or tuple argument of train.run as a list, or a ConfigError naming what was expected."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or (kind and not all(isinstance(v, kind) for v in value)):
        raise config.ConfigError(f"train.run's {name} must be a list of {what}, received {exits.quote(value)}.")
    return list(value)


def load_config(config_or_path: Union[str, os.PathLike, config.Config, dict, None],
                overrides: Iterable[str]) -> tuple[config.Config, list[str]]:
    """(Config, notes) from what train.run or the command line was given: a path, a Config, a dict or None.
    A `sweep:` section (sweep.py's) is allowed and noted: train.py trains the base settings once."""
    if isinstance(config_or_path, config.Config):
        for name, kind in config.SECTIONS.items():
            if not isinstance(getattr(config_or_path, name), kind):
                raise config.ConfigError(f"Config.{name} must be a config.{kind.__name__}, received "
                                         f"{exits.quote(getattr(config_or_path, name))}.")
        config_or_path = config_or_path.to_dict()
    if isinstance(config_or_path, dict):
        raw = config.apply_overrides(config_or_path, overrides)
    elif config_or_path is None or isinstance(config_or_path, (str, os.PathLike)):
        raw = config.load(config_or_path, overrides, extra_sections=("sweep",))[1]
    else:
        raise config.ConfigError(f"train.run takes a YAML path, a config.Config, a dict or None, received "
                                 f"{exits.quote(config_or_path)}.")
    cfg = config.from_dict(raw, extra_sections=("sweep",))
    notes = ["NOTE: the config's sweep: section is read by sweep.py; train.py trains its base settings once."] \
        if isinstance(raw, dict) and "sweep" in raw else []
    return cfg, notes


def evaluate(setup: machine.Setup, vae: Any, run_dir: str, history: list) -> tuple[dict, dict]:
    """The run's β = 1 evaluation on its validation digits, its verdict and its figures: (validation, verdict)."""
    from vae_kl.evaluation import clock
    from vae_kl.process import signals
    from vae_kl.reports import run_figures  # Loaded with TensorFlow already.

    cfg, digits = setup.cfg, setup.digits
    evaluated = min(len(digits.x_val), cfg.evaluation.max_examples or len(digits.x_val))
    print("Training done; the evaluation at β = 1 (the true ELBO, the IWAE bound, the verdict) ...")
    results = run_figures.evaluate_run(vae, run_dir, digits.x_val, digits.y_val, cfg.evaluation.iwae_k,
                                       cfg.evaluation.max_examples, history, len(history) * setup.steps_per_epoch,
                                       clock.Clock(evaluated, cfg.evaluation.iwae_k))
    signals.raise_if_interrupted()  # A Ctrl-C that TensorFlow swallowed during the evaluation still counts.
    return results
