"""Experiment tracking in MLflow (output.tracking: mlflow; pip install -r requirements-tracking.txt).

A run is one MLflow run: its resolved config as parameters, every per-epoch series of metrics.csv as
metrics with step = epoch, the final β = 1 numbers, the verdict and the effective β as metrics and tags,
and its figures, report.html and summary.json as artifacts. A sweep is a parent run with one child run per
setting and seed. The store is MLflow's own setting, $MLFLOW_TRACKING_URI, else a local SQLite file,
<output.dir>/mlflow.db (artifacts beside it in mlflow-artifacts/), so it works offline; the experiment is
$MLFLOW_EXPERIMENT_NAME, else "vae_kl".

Every epoch is logged once, whatever the moment of a kill: a row is logged after the checkpoint that
commits its epoch, and a resumed run (the same MLflow run, its id in summary.json) first logs the rows the
store lacks. mlflow.keras.MlflowCallback is not used (docs/tracking.md says why): it logs an epoch
before the checkpoint commits it, validation at step 0, and the optimizer's auto-generated name as a parameter.
A store that cannot be reached is refused before training; one that goes away during a run gives
one warning line, and the run goes on (its folder stays the record).
"""

import importlib.util
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Sequence
from typing import Optional

from vae_kl.process import atomic, exits

REQUIREMENTS = "requirements-tracking.txt"
PARENT_VARIABLE = "VAE_KL_MLFLOW_PARENT_RUN_ID"  # Set by sweep.py for its train.py children: their parent run.
PROBE_SECONDS = 5.0
BATCH = 100  # MLflow takes at most 100 parameters and 1,000 metrics per log_batch call.
ATTEMPTS, RETRY_SECONDS = 3, 1.0  # A store busy with another writer gets two more tries.
ARTIFACTS = (".png", ".html", ".json", ".yaml", ".csv", ".md")  # The folder's files logged at its end.
SWEEP_RECORD = "mlflow.json"  # In a sweep folder: its parent run.
STATUS = {"complete": "FINISHED", "interrupted": "KILLED", "failed": "FAILED", "diverged": "FAILED"}


class TrackingError(exits.UserError):
    """output.tracking cannot be used: MLflow is missing, or its store does not answer."""


def tracking_uri(output_dir: str) -> str:
    """$MLFLOW_TRACKING_URI, else the local SQLite store <output.dir>/mlflow.db."""
    store = os.path.abspath(os.path.join(output_dir, "mlflow.db"))
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or "vae_kl"


def check(output_dir: str) -> None:
    """Refuse output.tracking: mlflow before anything slow when MLflow is not installed or its server does not
    answer within PROBE_SECONDS (TrackingError, one line)."""
    if importlib.util.find_spec("mlflow") is None:  # Found without importing it, which takes seconds.
        raise TrackingError(f"output.tracking: mlflow needs the mlflow package, which is not installed; "
                            f"pip install -r {REQUIREMENTS} (or set output.tracking: none).")
    uri = tracking_uri(output_dir)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=PROBE_SECONDS).close()
        except OSError as error:
            raise TrackingError(f"the MLflow tracking server at {uri} ($MLFLOW_TRACKING_URI) did not answer within "
                                f"{PROBE_SECONDS:g} s ({error.strerror or type(error).__name__}); start it, or unset "
                                f"MLFLOW_TRACKING_URI to track in {os.path.join(output_dir, 'mlflow.db')}.")


def flat_settings(settings: dict, prefix: str = "") -> dict:
    """{"loss": {"kl_weight": 1.0}} -> {"loss.kl_weight": "1.0"}: the config as MLflow parameters."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def numbers(row: dict) -> dict:
    """The numeric entries of a metrics.csv row or of summary.json's validation (lists as key_0, key_1, ...)."""
    found = {}
    for key, value in row.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            found[key] = float(value)
        elif isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            found.update({f"{key}_{i}": float(v) for i, v in enumerate(value)})
    return found


class Tracker:
    """One run folder's MLflow run. Every call after a failure of the store is a no-op (one warning is printed)."""

    def __init__(self, output_dir: str, name: str, parent_run_id: Optional[str] = None):
        from mlflow.tracking import MlflowClient  # Only runs that track load MLflow (its import takes seconds).

        for chatter in ("mlflow", "alembic"):  # "Creating initial MLflow database tables...": not the run's news.
            logging.getLogger(chatter).setLevel(logging.WARNING)

        self.uri, self.name, self.parent = tracking_uri(output_dir), name, parent_run_id
        # Beside the local store; a store of the user's ($MLFLOW_TRACKING_URI) keeps artifacts where it is set to.
        self.artifacts = (None if os.environ.get("MLFLOW_TRACKING_URI") else
                          "file://" + os.path.abspath(os.path.join(output_dir, "mlflow-artifacts")))
        self.client, self.run_id, self.broken, self.logged = MlflowClient(self.uri), None, False, 0

    def attempt(self, what: str, action):
        """action()'s result, tried up to ATTEMPTS times (SQLite refuses a writer while another one writes); after
        the last failure one WARNING line, and every later call of the tracker is a no-op (returns None)."""
        for attempt in range(ATTEMPTS):
            if self.broken:
                return None
            try:
                return action()
            except Exception as error:  # MLflow raises many kinds (HTTP, SQL, its own); each means the store failed.
                if attempt + 1 < ATTEMPTS:
                    time.sleep(RETRY_SECONDS * (attempt + 1))
                    continue
                self.broken = True
                print(f"WARNING: MLflow stopped answering while {what} ({exits.first_line(error, 160)}); the run "
                      f"goes on without tracking, its folder holds every result.", flush=True)
        return None

    def start(self, settings: dict, run_id: Optional[str] = None, history: Sequence = ()) -> str:
        """Open the MLflow run (a new one, or run_id resumed), log the settings once, and the epochs of `history`
        the store lacks; returns the run's id (None when the store failed)."""
        self.run_id = self.attempt("starting the run", lambda: self.open(settings, run_id))
        self.log_epochs(history)
        return self.run_id

    def open(self, settings: dict, run_id: Optional[str] = None) -> str:
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.logged = max((metric.step for metric in self.client.get_metric_history(run_id, "loss")), default=0)
            return run_id
        experiment = self.experiment_id()
        run_id = self.client.create_run(experiment, run_name=self.name, tags=self.start_tags()).info.run_id
        self.log_params(run_id, settings)
        return run_id

    def experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(experiment_name())
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(experiment_name(), artifact_location=self.artifacts)

    def start_tags(self) -> dict:
        tags = {"vae_kl.run_folder": self.name}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        return tags

    def log_params(self, run_id: str, settings: dict) -> None:
        from mlflow.entities import Param

        params = [Param(key, value[:6000]) for key, value in flat_settings(settings).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[start:start + BATCH])

    def log_epochs(self, history: list) -> None:
        """Log metrics.csv's rows whose epoch the store does not hold yet, step = epoch."""
        rows = [row for row in history if int(row["epoch"]) > self.logged]
        if not rows or self.run_id is None:
            return
        points = [(key, value, int(row["epoch"])) for row in rows for key, value in numbers(row).items()
                  if key != "epoch"]
        if self.attempt(f"logging epoch {rows[-1]['epoch']}", lambda: self.log_metrics(points)):
            self.logged = int(rows[-1]["epoch"])

    def log_metrics(self, points: list) -> bool:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value, step in points]
        for start in range(0, len(metrics), 10 * BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 10 * BATCH])
        return True

    def end(self, summary: dict, folder: str) -> None:
        """The run's end: its final numbers and verdict (a complete run), its files as artifacts, its status."""
        if self.run_id is not None:
            self.attempt("ending the run", lambda: self.close(summary, folder))

    def close(self, summary: dict, folder: str) -> None:
        if summary.get("status") == "complete":
            self.log_results(summary)
        for name in sorted(os.listdir(folder)):
            if name.endswith(ARTIFACTS):
                self.client.log_artifact(self.run_id, os.path.join(folder, name))
        self.client.set_terminated(self.run_id, status=STATUS.get(summary.get("status"), "FAILED"))

    def log_results(self, summary: dict) -> None:
        step = int(summary.get("epochs_completed") or 0)
        described, collapse = summary.get("objective") or {}, summary.get("collapse") or {}
        values = {f"final_{key}": value for key, value in numbers(summary.get("validation") or {}).items()}
        for key in ("effective_beta", "beta_norm"):
            if isinstance(described.get(key), (int, float)):
                values[key] = float(described[key])
        self.log_metrics([(key, value, step) for key, value in values.items()])
        for key, value in (("verdict", collapse.get("state")), ("effective_beta", described.get("effective_beta")),
                           ("dataset", summary.get("dataset")), ("formula", described.get("formula"))):
            if value is not None:  # A number as a person reads it: 784, not 784.0000000000001.
                self.client.set_tag(self.run_id, key, f"{value:.6g}" if isinstance(value, float) else str(value))


def start_sweep(folder: str, output_dir: str, spec: dict) -> tuple:
    """The sweep's parent run (resumed when <sweep>/mlflow.json names one), its sweep.yaml as parameters. Returns
    (environment, tracker): the environment its train.py children need (the store: the base output.dir's, not
    their own folder's; the parent run's id for their mlflow.parentRunId) and the parent's Tracker."""
    record = os.path.join(folder, SWEEP_RECORD)
    tracker = Tracker(output_dir, os.path.basename(folder))
    earlier = atomic.read_json(record) or {}
    run_id = tracker.start({"sweep": spec}, earlier.get("mlflow_run_id"))
    environment = {"MLFLOW_TRACKING_URI": tracker.uri}
    if run_id:
        atomic.atomic_write_json(record, {"mlflow_run_id": run_id, "mlflow_tracking_uri": tracker.uri})
        environment[PARENT_VARIABLE] = run_id
    return environment, tracker


def end_sweep(tracker: Tracker, folder: str, complete: bool) -> None:
    """The parent run's end: the sweep's table and page as artifacts, FINISHED when every run completed."""
    tracker.end({"status": "complete" if complete else "failed"}, folder)
