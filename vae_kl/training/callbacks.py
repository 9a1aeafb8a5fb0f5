"""The training run's Keras callbacks: small top-level classes, as keras-io's GANMonitor."""

import math
import os
import time
from typing import TYPE_CHECKING, Any, Optional

import keras
import numpy as np

from vae_kl.evaluation import codes, information, verdict
from vae_kl.parts.geco import kl_weight_in_force
from vae_kl.process import atomic, signals
from vae_kl.reports import plots
from vae_kl.runs import records

if TYPE_CHECKING:
    from vae_kl.spec import config
    from vae_kl.tracking.mlflow_log import Tracker
    from vae_kl.training.machine import Setup

UNIT_LOG_EXAMPLES = 500  # Validation digits behind the per-epoch, per-unit KL and information.
EARLY_EPOCHS = 3  # A collapse the watch sees in these first epochs is said to be usual at the start.
WATCH_DRAWS = 2  # Noise draws of the per-epoch information (the final verdict averages evaluate's 8): cheaper.


def run_callbacks(setup: "Setup", model: Any, run_dir: str, history: list, tracker: Optional["Tracker"] = None
                  ) -> tuple["RunRecorder", "PhaseClock", list[keras.callbacks.Callback]]:
    """(recorder, clock, the run's callbacks in the order they must run).

    The order matters: the clock first (its epoch start closes the others' work); then TensorBoard's
    events, then the recorder, whose checkpoint commits the epoch. A kill between the two leaves events of
    an epoch the checkpoint does not hold, which the resumed logger prunes and writes again; the other way
    round, a kill after the checkpoint would lose that epoch's events for good. MLflow (tracker, an
    mlflow_log.Tracker) comes after the checkpoint: a store cannot prune, so it is given committed epochs only.
    """
    watch = CodeWatch(setup.digits.x_val[:UNIT_LOG_EXAMPLES])
    recorder, clock = RunRecorder(setup, run_dir, history, watch), PhaseClock()
    tracked = [TrackedEpochs(tracker, history)] if tracker is not None else []
    return recorder, clock, [clock, watch, *tensorboard_callbacks(setup, model, run_dir, recorder), recorder, *tracked]


def tensorboard_callbacks(setup: "Setup", model: Any, run_dir: str,
                          recorder: "RunRecorder") -> list[keras.callbacks.Callback]:
    """[the TensorBoard logger] when output.tensorboard is on (event files in <run>/tensorboard), else []."""
    if not setup.cfg.output.tensorboard:
        return []
    from vae_kl.tracking import (
        tensorboard_log,  # Only runs that log to TensorBoard load its package (and TensorBoard's).
    )

    x = setup.digits.x_val[recorder.grid_index]
    return [tensorboard_log.TensorBoardLogger(
        os.path.join(run_dir, tensorboard_log.RUN_SUBFOLDER), trial_id=os.path.basename(run_dir),
        settings=setup.cfg.to_dict(), images_fn=lambda: tensorboard_log.image_grid([x, codes.reconstruct(model, x)]),
        extra_fn=recorder.extra_logs)]


def log_evaluation(cfg: "config.Config", run_dir: str, validation: dict, verdict: dict, epochs: int) -> None:
    """After the final evaluation: give the loggers the run's numbers and verdict (TensorBoard, when on)."""
    if cfg.output.tensorboard:
        from vae_kl.tracking import tensorboard_log  # As in tensorboard_callbacks.

        tensorboard_log.write_run_evaluation(run_dir, validation, verdict, epochs)


class PhaseClock(keras.callbacks.Callback):
    """Wall time of each epoch's three phases: the gradient steps, the validation pass, and the work
    between epochs (metrics.csv, the grid, the checkpoint, TensorBoard, Keras's own bookkeeping).

    Goes first in the callback list, so that its on_epoch_begin, which closes the previous epoch's
    work, comes after every other callback's on_epoch_end. `epochs` holds one dict per epoch:
    {"steps": s, "validation": s, "between": s}; the first epoch's include tracing.
    """

    def __init__(self):
        super().__init__()
        self.epochs, self._current, self._mark = [], None, None

    def _lap(self):
        now = time.perf_counter()
        elapsed, self._mark = now - self._mark, now
        return elapsed

    def _close(self):
        if self._current is not None:
            self._current["between"] = self._lap()
            self.epochs.append(self._current)
            self._current = None

    def on_epoch_begin(self, epoch, logs=None):
        self._close()
        self._current, self._mark = {"validation": 0.0}, time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._current is not None and "steps" not in self._current:  # Fit's validation pass.
            self._current["steps"] = self._lap()

    def on_test_end(self, logs=None):
        if self._current is not None and "steps" in self._current:
            self._current["validation"] = self._lap()

    def on_epoch_end(self, epoch, logs=None):
        if self._current is not None and "steps" not in self._current:  # No validation data.
            self._current["steps"] = self._lap()

    def on_train_end(self, logs=None):
        self._close()

    def totals(self):
        """Seconds over the epochs this process ran: gradient_steps, validation, between_epochs and tracing
        (the first epoch's steps and validation beyond the median of the later epochs'; None with one epoch,
        whose tracing then counts as steps and validation)."""
        if not self.epochs:
            return {"gradient_steps": 0.0, "validation": 0.0, "between_epochs": 0.0, "tracing": None}
        steps, validation = ([e[key] for e in self.epochs] for key in ("steps", "validation"))
        extra = [0.0, 0.0]
        if len(self.epochs) > 1:
            extra = [max(0.0, series[0] - float(np.median(series[1:]))) for series in (steps, validation)]
        return {"gradient_steps": sum(steps) - extra[0], "validation": sum(validation) - extra[1],
                "between_epochs": sum(e["between"] for e in self.epochs),
                "tracing": sum(extra) if len(self.epochs) > 1 else None}


class CodeWatch(keras.callbacks.Callback):
    """After every epoch, the information the code carries (the verdict's estimator, evaluate.information)
    on the first validation digits, put into the epoch's logs as val_information: so it is on the epoch's
    console line, in metrics.csv and in TensorBoard. Says in one line when the code collapses (less than
    verdict.COLLAPSED_BELOW_NATS) and when it recovers. `per_unit` holds the last epoch's I(x; z_j).

    x: the validation digits to encode, (n, H, W, C); a few hundred keep it to a fraction of an epoch.
    """

    def __init__(self, x):
        super().__init__()
        self.x, self.per_unit, self.collapsed_since, self.pending = x, None, None, None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not all(math.isfinite(float(v)) for v in logs.values()):
            return  # A diverged epoch: the recorder stops the run; its codes say nothing.
        z_mean, z_log_var = codes.encode(self.model, self.x)
        total, self.per_unit = information.information(z_mean, z_log_var, draws=WATCH_DRAWS)
        logs["val_information"] = total
        collapsed = total < verdict.COLLAPSED_BELOW_NATS
        if collapsed and self.collapsed_since is None:
            self.collapsed_since = epoch + 1
            early = "; most runs start so and many recover, the verdict at the end decides" if epoch < EARLY_EPOCHS \
                else ""
            self.pending = (f"Epoch {epoch + 1}: so far the code carries {total:.2g} nats about the digit: collapsed "
                            f"for now (below {verdict.COLLAPSED_BELOW_NATS:g} nats, so the decoder learns nothing "
                            f"from z{early}).")
        elif not collapsed and self.collapsed_since is not None:
            self.pending = (f"Epoch {epoch + 1}: the code carries {total:.2g} nats again: recovered from the "
                            f"collapse of epoch {self.collapsed_since}.")
            self.collapsed_since = None

    # Said after Keras's line for the epoch (its progress bar prints once every callback's on_epoch_end ran).
    def on_epoch_begin(self, epoch, logs=None):
        self._say()

    def on_train_end(self, logs=None):
        self._say()

    def _say(self):
        if self.pending:
            print(self.pending, flush=True)
            self.pending = None


class TrackedEpochs(keras.callbacks.Callback):
    """After the recorder's checkpoint: the epochs committed since the last call go to MLflow (tracker.log_epochs
    logs only the rows its store lacks, so a resumed run logs every epoch once)."""

    def __init__(self, tracker, history):
        super().__init__()
        self.tracker, self.history = tracker, history

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.log_epochs(self.history)


class RunRecorder(keras.callbacks.Callback):
    """After every epoch: the row of metrics.csv, the reconstruction grid, the checkpoint; stops on NaN.

    Args:
        setup: train.Setup (the config, the digits and the step counts).
        run_dir: the run folder.
        history: the list of per-epoch rows, extended in place (restored rows first when resuming).
    """

    def __init__(self, setup, run_dir, history, watch=None):
        super().__init__()
        self.setup, self.run_dir, self.history, self.watch = setup, run_dir, history, watch
        self.grid_index = plots.pick_one_per_class(setup.digits.y_val)
        self.diverged_at = None  # (epoch, step) of the first NaN or infinite loss.
        self.started, self.ended = time.time(), None

    def on_epoch_begin(self, epoch, logs=None):
        signals.raise_if_interrupted()
        self.model.encoder.get_layer("z").reseed(epoch)
        self.started, self.ended = time.time(), None

    def on_test_end(self, logs=None):  # The epoch's validation pass: its seconds end here, as PhaseClock's do.
        self.ended = time.time()

    def on_train_batch_end(self, batch, logs=None):
        signals.raise_if_interrupted()
        if logs and not math.isfinite(float(logs["loss"])):
            self.diverged_at = (len(self.history) + 1, batch + 1)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        values = {k: float(v) for k, v in (logs or {}).items()}
        if self.diverged_at or not all(math.isfinite(v) for v in values.values()):
            self.diverged_at = self.diverged_at or (epoch + 1, self.setup.steps_per_epoch)
            self.model.stop_training = True
            return
        row = {"epoch": epoch + 1, **values, "kl_weight": float(kl_weight_in_force(self.model)),
               "seconds": (self.ended or time.time()) - self.started}
        if self.model.objective.chooses_beta:  # GECO's β after the epoch's last step.
            row["beta"] = float(self.model.geco.beta())
        if self.model.objective.target_rate is not None:  # The capacity C in force after it.
            row["target_rate"] = float(self.model.objective.rate_at(self.model.optimizer.iterations))
        if self.watch is not None and self.watch.per_unit is not None:  # I(x; z_j) per unit, for the figure.
            row.update({f"val_information_unit_{j}": float(v) for j, v in enumerate(self.watch.per_unit)})
        if self.setup.cfg.output.per_epoch_images:
            digits = self.setup.digits
            x, labels = digits.x_val[self.grid_index], digits.y_val[self.grid_index]
            plots.reconstructions(x, codes.reconstruct(self.model, x), labels,
                                  os.path.join(self.run_dir, "epochs", f"reconstructions_epoch_{epoch + 1:03d}.png"),
                                  f"Epoch {epoch + 1}: -ELBO {row['val_neg_elbo']:.1f}, KL {row['val_kl']:.3f} nats")
        # The checkpoint is the commit point: a kill before it redoes this epoch, after it skips it. The row
        # joins the history once the checkpoint holds it, so a failed checkpoint leaves the history as saved.
        records.save_checkpoint(self.run_dir, self.model,
                                {"epochs_completed": epoch + 1, "history": [*self.history, row]})
        self.history.append(row)
        atomic.write_csv(os.path.join(self.run_dir, "metrics.csv"), self.history)
        records.update_summary(self.run_dir, epochs_completed=epoch + 1)

    def extra_logs(self):
        """For the TensorBoard logger (extra_fn): the KL weight in force, and per latent unit on the first
        validation digits the closed-form KL (where the prior has one) and I(x; z_j), as lists it writes as
        kl_per_unit/j and information_per_unit/j."""
        logs = {"kl_weight": float(kl_weight_in_force(self.model))}
        if self.model.objective.chooses_beta:
            logs["beta"] = float(self.model.geco.beta())
        if self.watch is not None and self.watch.per_unit is not None:  # Computed this epoch by the watch.
            logs["information_per_unit"] = self.watch.per_unit.tolist()
        if self.model.prior.closed_form_kl:
            z_mean, z_log_var = codes.encode(self.model, self.setup.digits.x_val[:UNIT_LOG_EXAMPLES])
            kl = np.asarray(self.model.prior.kl(z_mean, z_log_var, None)).mean(axis=0)
            logs["kl_per_unit"] = kl.tolist()
        return logs
