"""TensorBoard event files for a run and for a sweep, written with tf.summary directly.

Layout (suggested log_dir: <run_dir>/tensorboard; `tensorboard --logdir <run_dir>/tensorboard`, or
`--logdir outputs/sweep_x` for a whole sweep):

    <log_dir>/               settings (text, tag "settings") and HParams (session start info), step 0
    <log_dir>/train/         one scalar per numeric Keras log key without "val_", step = epoch (1-based)
    <log_dir>/validation/    the "val_" keys with the prefix removed, so "loss" of train and validation
                             overlay in one chart; the image "reconstructions", step = epoch
    <log_dir>/evaluation/    the final β = 1 metrics (write_final_metrics), the HParams metric columns
    <sweep_folder>/          the HParams experiment config (write_sweep_hparams)

keras.callbacks.TensorBoard is not used: it needs TensorBoard's profiler plugin or raises
TBNotInstalledError, and it writes the graph and weight histograms we do not want.
"""

import contextlib
import glob
import numbers
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from vae_kl.process import exits

RUN_SUBFOLDER = "tensorboard"  # A run's events: <run_dir>/tensorboard.
SETTINGS_TAG = "settings"
IMAGE_TAG = "reconstructions"
EXPERIMENT_TAG = "_hparams_/experiment"  # What hp.hparams_config writes (tensorboard.plugins.hparams.metadata).
TRAIN, VALIDATION, EVALUATION = "train", "validation", "evaluation"
# The HParams dashboard's metric columns: (tag in <log_dir>/evaluation, display name, description).
FINAL_METRICS = (
    ("neg_elbo_nats", "-ELBO (nats)", "Validation -ELBO per digit, β = 1."),
    ("iwae_nll_nats", "IWAE NLL (nats)", "Validation IWAE bound on -log p(x)."),
    ("kl_nats", "KL (nats)", "Validation KL(q(z|x) || p(z)) per digit."),
    ("reconstruction_nats", "reconstruction (nats)", "Validation E_q[-log p(x|z)] per digit."),
    ("mutual_information_nats", "I(x; z) (nats)", "Mutual information under the encoder."),
    ("active_units", "active units", "Latent units with Var_x E[z_j|x] > 0.01."),
    ("collapsed", "collapsed", "1 when the run's verdict is posterior collapse, else 0."),
)


def flatten_settings(settings: Optional[dict], prefix: str = "") -> dict:
    """{"loss": {"kl_weight": 1.0}} -> {"loss.kl_weight": 1.0}; flat dicts pass through unchanged."""
    flat = {}
    for key, value in (settings or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_settings(value, name + "."))
        else:
            flat[name] = value
    return flat


def hparam_value(value: Any) -> Union[bool, float, str]:
    """A setting as an HParams value. Numbers become float (so 1 in a grid and 1.0 in a validated config
    are the same value), None becomes "null", anything else that is not bool/str its str()."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Number):
        return float(value)
    if value is None:
        return "null"
    return value if isinstance(value, str) else str(value)


def settings_markdown(settings: Optional[dict]) -> str:
    """The flattened settings as a two-column markdown table (TensorBoard's Text tab renders it)."""
    rows = [f"| `{key}` | `{value!r}` |" for key, value in flatten_settings(settings).items()]
    return "\n".join(["| setting | value |", "|---|---|", *rows])


def scalars_of(logs: Optional[dict]) -> dict[str, float]:
    """Numeric log entries as {key: float}. A vector (e.g. per-unit KL) becomes key/0, key/1, ...;
    strings and other non-numbers are skipped."""
    found = {}
    for key, value in (logs or {}).items():
        try:
            array = np.asarray(value, dtype="float64")
        except (TypeError, ValueError):
            continue
        if array.ndim == 0:
            found[key] = float(array)
        else:
            found.update({f"{key}/{i}": float(v) for i, v in enumerate(array.ravel())})
    return found


def image_grid(rows: Iterable[npt.ArrayLike]) -> np.ndarray:
    """Rows of images, each (N, H, W) or (N, H, W, C) in [0, 1], as one image (1, R*H, N*W, C):
    TensorBoard shows one image of a batch at a time, so a single grid reads best."""
    rows = [np.asarray(r, dtype="float32") for r in rows]
    rows = [r[..., None] if r.ndim == 3 else r for r in rows]
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)[None]


def _event_files(folder):
    return sorted(glob.glob(os.path.join(folder, "*tfevents*")))


def _read_events(path):
    """The events of one file; a record cut short by a kill ends the file instead of raising."""
    events = []
    try:
        for record in tf.data.TFRecordDataset(path):
            events.append(tf.compat.v1.Event.FromString(record.numpy()))
    except tf.errors.DataLossError:
        pass
    return events


def _tags(event):
    return {value.tag for value in event.summary.value}


def prune_after(folder: str, last_step: int) -> set[str]:
    """Drop the events with step > last_step from the event files of `folder` (rewritten atomically,
    only when they hold such events). Returns the tags kept. Used on resume: a killed run may have
    logged an epoch that its checkpoint does not hold, and that epoch is trained and logged again."""
    kept_tags = set()
    for path in _event_files(folder):
        events = _read_events(path)
        kept = [e for e in events if e.step <= last_step or not e.HasField("summary")]
        for event in kept:
            kept_tags |= _tags(event)
        if len(kept) == len(events):
            continue
        scratch = os.path.join(folder, ".pruning")  # No "tfevents" in the name: TensorBoard skips it.
        with tf.io.TFRecordWriter(scratch) as writer:
            for event in kept:
                writer.write(event.SerializeToString())
        os.replace(scratch, path)
    return kept_tags


def usable(log_dir: str) -> bool:
    """Whether log_dir can take events: a folder, or a path whose parent is a folder that will hold it."""
    return os.path.isdir(log_dir) or (not os.path.lexists(log_dir) and os.path.isdir(os.path.dirname(log_dir)))


class Events:
    """A run's TensorBoard folder as the run's events see it: usable, or given up with one warning.

    TensorBoard is a view of the run, not its record (metrics.csv, the figures and summary.json are): when its
    folder becomes unusable (replaced by a file, removed, a write refused) the run says so in one WARNING line
    and goes on without events; later writes of the same folder in this process are skipped.
    """

    given_up = set()  # The log folders warned about since their run's fit began (its evaluation comes after).

    def __init__(self, log_dir):
        self.log_dir = log_dir

    @property
    def off(self):
        return self.log_dir in Events.given_up

    def give_up(self, what, why):
        if not self.off:
            Events.given_up.add(self.log_dir)
            print(f"WARNING: TensorBoard events stopped {what}: {self.log_dir} {why}; training goes on, and "
                  f"metrics.csv, the figures and summary.json hold every result.", flush=True)

    @contextlib.contextmanager
    def written(self, what):
        """Run the block's writes unless given up; a TensorFlow or OS error in them gives up (one warning)."""
        if self.off:
            yield False
            return
        try:
            yield True
        except (tf.errors.OpError, OSError) as error:
            message = error.message if isinstance(error, tf.errors.OpError) else str(error)
            self.give_up(what, f"cannot be written ({exits.first_line(message, 160)})")

    def check(self, what, folders):
        """Give up when one of the folders the writers write into is no longer a folder: an open event file
        in a removed folder takes writes without an error, and they would be lost without a word."""
        if not self.off and not all(os.path.isdir(folder) for folder in folders):
            self.give_up(what, "is no longer a folder")
        return not self.off


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes every numeric entry of the epoch's logs as a scalar, an optional image, and the settings.

    log_dir: the run's TensorBoard folder (suggested <run_dir>/tensorboard); the layout is in the
        module docstring. Keys starting with "val_" go to <log_dir>/validation without the prefix,
        all others to <log_dir>/train, at step epoch + 1. Extra values (kl_weight, per-unit KL as
        kl_per_unit=[...] or kl_unit_0, ...) are logged the same way when the caller puts them into
        `logs` before this callback runs (i.e. a callback earlier in the list adds them).
    images_fn: None, or a function of no arguments returning (N, H, W, C) (or (H, W, C)) floats in
        [0, 1], written to <log_dir>/validation as the image "reconstructions" after every epoch.
    settings: None, or the run's settings (nested like config.to_dict(), or flat); written once at
        train begin as a markdown table and as HParams (names "section.key"), step 0.
    trial_id: the HParams session group name (e.g. the sweep's run label); default a hash of settings.
    extra_fn: None, or a function of no arguments returning more {key: number or list} to write with
        the epoch's logs (per-unit values, the KL weight), which keeps them off Keras's progress line.

    Events are flushed after every epoch, so a killed run keeps every epoch it finished. Resume: at
    the first epoch of a fit with initial_epoch = k > 0, events with step > k already on disk (from an
    epoch the checkpoint does not hold) are removed, so each step appears once, with the values of the
    epoch that counts; the settings are written again only if no earlier file holds them.
    """

    def __init__(self, log_dir, images_fn=None, settings=None, trial_id=None, extra_fn=None):
        super().__init__()
        self.log_dir, self.images_fn, self.settings, self.trial_id = log_dir, images_fn, settings, trial_id
        self.extra_fn = extra_fn
        self._writers, self._started, self.events = None, False, Events(log_dir)

    def _writer(self, name):
        if self._writers is None:
            folders = dict(zip(("", TRAIN, VALIDATION), self._folders()))
            # Files present before this fit are older attempts; only those are pruned on resume.
            self._earlier = {key: _event_files(folder) for key, folder in folders.items()}
            self._writers = {key: tf.summary.create_file_writer(folder) for key, folder in folders.items()}
        return self._writers[name]

    def on_train_begin(self, logs=None):
        Events.given_up.discard(self.log_dir)  # A new fit of the run (a resume in the same notebook) tries again.
        with self.events.written("before the first epoch") as ok:
            if ok:
                self._log_settings()

    def _log_settings(self):
        self._writer("")
        if self.settings is None or any(self._holds_settings(path) for path in self._earlier[""]):
            return
        with self._writer("").as_default():
            tf.summary.text(SETTINGS_TAG, settings_markdown(self.settings), step=0)
            hp.hparams({k: hparam_value(v) for k, v in flatten_settings(self.settings).items()},
                       trial_id=self.trial_id)
        self._writer("").flush()

    @staticmethod
    def _holds_settings(path):
        return any(SETTINGS_TAG in _tags(event) for event in _read_events(path))

    def _start(self, epoch):
        """Once per fit, at its first epoch (= initial_epoch): prune what a killed attempt left after it."""
        if self._started:
            return
        self._started = True
        self._writer("")
        for name in (TRAIN, VALIDATION):
            if self._earlier[name]:
                prune_after(os.path.join(self.log_dir, name), epoch)

    def on_epoch_begin(self, epoch, logs=None):
        with self.events.written(f"in epoch {epoch + 1}") as ok:
            if ok:
                self._start(epoch)

    def on_epoch_end(self, epoch, logs=None):
        with self.events.written(f"in epoch {epoch + 1}") as ok:
            if ok and self.events.check(f"in epoch {epoch + 1}", self._folders()):
                self._log_epoch(epoch, logs)

    def _folders(self):
        return [self.log_dir, os.path.join(self.log_dir, TRAIN), os.path.join(self.log_dir, VALIDATION)]

    def _log_epoch(self, epoch, logs):
        self._start(epoch)
        step = epoch + 1
        logs = {**(logs or {}), **(self.extra_fn() if self.extra_fn is not None else {})}
        for key, value in scalars_of(logs).items():
            name, tag = (VALIDATION, key[4:]) if key.startswith("val_") else (TRAIN, key)
            with self._writer(name).as_default():
                tf.summary.scalar(tag, value, step=step)
        if self.images_fn is not None:
            images = np.clip(np.asarray(self.images_fn(), dtype="float32"), 0.0, 1.0)
            images = images[None] if images.ndim == 3 else images
            with self._writer(VALIDATION).as_default():
                tf.summary.image(IMAGE_TAG, images, step=step, max_outputs=len(images))
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        self.close()

    def close(self):
        """Flush and close the writers; a later fit with the same logger opens new files."""
        for writer in (self._writers or {}).values():
            with self.events.written("at the end of training"):
                writer.close()
        self._writers, self._started = None, False


def final_metrics(validation: dict, verdict: Optional[dict] = None) -> dict[str, float]:
    """The HParams metric values from summary.json's `validation` and `collapse` entries: the
    FINAL_METRICS keys present in `validation`, and collapsed = 1.0/0.0 from verdict["detected"]."""
    values = {tag: float(validation[tag]) for tag, _, _ in FINAL_METRICS
              if isinstance(validation.get(tag), numbers.Number) and not isinstance(validation.get(tag), bool)}
    if verdict is not None:
        values["collapsed"] = float(bool(verdict["detected"]))
    return values


def write_final_metrics(log_dir: str, metrics: dict[str, float], step: int) -> bool:
    """Write {tag: number} as scalars into <log_dir>/evaluation at `step` (the epochs completed), where
    the HParams dashboard looks up its metric columns; non-finite values are written as they are.

    Written once whatever the moment of a kill: the events go into a file beside the folder, then the folder's
    earlier files (an evaluation that a kill cut short before summary.json said complete, or an earlier
    evaluate.py) are removed and the new file moved in. A kill between the two leaves none, which the resumed
    run's evaluation writes again. Returns whether it wrote (False: the folder was given up, one warning).
    """
    folder, events = os.path.join(log_dir, EVALUATION), Events(log_dir)
    with events.written("at the evaluation") as ok:
        if not ok or not events.check("at the evaluation", [log_dir]):
            return False
        scratch = tempfile.mkdtemp(prefix=".evaluation-events-", dir=os.path.dirname(os.path.abspath(log_dir)))
        try:
            writer = tf.summary.create_file_writer(scratch)
            with writer.as_default():
                for tag, value in metrics.items():
                    tf.summary.scalar(tag, float(value), step=step)
            writer.close()
            os.makedirs(folder, exist_ok=True)
            for path in _event_files(folder):
                os.remove(path)
            for path in _event_files(scratch):
                os.replace(path, os.path.join(folder, os.path.basename(path)))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return True
    return False


def write_run_evaluation(run_dir: str, validation: dict, verdict: Optional[dict], epochs: int) -> bool:
    """A finished run's β = 1 numbers (summary.json's validation and collapse) as its HParams metric columns."""
    return write_final_metrics(os.path.join(run_dir, RUN_SUBFOLDER), final_metrics(validation, verdict), epochs)


def hparam_domain(values: Iterable[Any]) -> Optional[hp.Discrete]:
    """An hp.Discrete of the grid's values (numbers as float), or None when they mix types (e.g. a
    gaussian_sigma grid of 0.1 and "learned"): the dashboard then shows the values without a domain."""
    normalized = sorted({hparam_value(v) for v in values}, key=lambda v: (str(type(v)), v))
    kinds = {type(v) for v in normalized}
    return hp.Discrete(normalized) if len(kinds) == 1 else None


def write_sweep_hparams(sweep_folder: str, grid: dict[str, list],
                        metrics: Sequence[tuple[str, str, str]] = FINAL_METRICS) -> bool:
    """Write the HParams experiment config at the sweep folder's root (run "." for
    `tensorboard --logdir <sweep_folder>`).

    grid: {"loss.kl_weight": [0.1, 1, 10], ...}, the sweep's keys (named as in the runs' flattened
        settings, so each run's session start info matches) and their values.
    metrics: (tag, display name, description) triples; each becomes hp.Metric(tag, group="evaluation"),
        read from <sweep_folder>/<run>/.../evaluation, which write_final_metrics writes.
    Idempotent: when an event file there already holds the experiment (a re-run of the sweep, which
    sweep.py only allows with the same grid), nothing is written. Returns whether it wrote.
    """
    if any(EXPERIMENT_TAG in _tags(e) for path in _event_files(sweep_folder) for e in _read_events(path)):
        return False
    hparams = [hp.HParam(key, hparam_domain(values)) for key, values in grid.items()]
    columns = [hp.Metric(tag, group=EVALUATION, display_name=name, description=text) for tag, name, text in metrics]
    writer = tf.summary.create_file_writer(sweep_folder)
    with writer.as_default():
        hp.hparams_config(hparams=hparams, metrics=columns)
    writer.close()
    return True
