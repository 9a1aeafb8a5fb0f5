"""output.tracking: mlflow: what a run and a sweep put into MLflow, a resume that logs every epoch once, and the
faults: MLflow missing, a server that does not answer, a store that fails during the run."""

import csv
import importlib.util
import os
import socket

import pytest

import train
from conftest import ROOT, interrupting_callback, quick_config, quick_sets, run_cli
from vae_kl.process import atomic, exits
from vae_kl.tracking import mlflow_log

mlflow = pytest.importorskip("mlflow")  # requirements-tracking.txt; .ci/run installs it.
from mlflow.tracking import MlflowClient  # noqa: E402

TRACKED = ["output.tracking=mlflow", "train.epochs=2"]


@pytest.fixture(autouse=True)
def own_store(monkeypatch):
    """Each test's store is its own output.dir's mlflow.db, whatever the machine's environment says."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", mlflow_log.PARENT_VARIABLE):
        monkeypatch.delenv(name, raising=False)


def store(output_dir):
    client = MlflowClient(f"sqlite:///{os.path.join(output_dir, 'mlflow.db')}")
    experiment = client.get_experiment_by_name("vae_kl")
    return client, client.search_runs([experiment.experiment_id])


def steps(client, run_id, key):
    return [(metric.step, metric.value) for metric in sorted(client.get_metric_history(run_id, key),
                                                             key=lambda metric: metric.step)]


def metrics_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_run_is_one_mlflow_run_with_its_settings_epochs_results_and_files(tmp_path):
    status, run_dir = train.train(quick_config(tmp_path, *TRACKED))
    assert status == 0
    summary = atomic.read_json(os.path.join(run_dir, "summary.json"))
    client, runs = store(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == summary["tracking"]["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.info.run_name == os.path.basename(run_dir)
    assert run.data.params["loss.kl_weight"] == "1.0" and run.data.params["output.tracking"] == "mlflow"
    rows = metrics_rows(run_dir)
    for key in ("loss", "val_neg_elbo", "kl_weight"):  # Every epoch once, step = epoch, the values of metrics.csv.
        assert steps(client, run.info.run_id, key) == pytest.approx([(int(r["epoch"]), float(r[key])) for r in rows])
    assert run.data.metrics["final_neg_elbo_nats"] == pytest.approx(summary["validation"]["neg_elbo_nats"])
    assert run.data.tags["verdict"] == summary["collapse"]["state"]
    assert run.data.tags["effective_beta"] == f"{summary['objective']['effective_beta']:.6g}"
    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.json", "metrics.csv", "reconstructions.png", "config.yaml"} <= artifacts
    assert (tmp_path / "mlflow-artifacts").is_dir()  # Beside the store: offline, nothing outside output.dir.


def test_a_resumed_run_continues_its_mlflow_run_and_logs_every_epoch_once(tmp_path):
    cfg = quick_config(tmp_path, *TRACKED, "train.epochs=3")
    summary = train.run(cfg, callbacks=[interrupting_callback(after=2)])
    assert summary["status"] == "interrupted"
    client, runs = store(tmp_path)
    assert [run.info.status for run in runs] == ["KILLED"]
    assert [step for step, _ in steps(client, runs[0].info.run_id, "loss")] == [1, 2]
    resumed = train.run(cfg)
    assert resumed["status"] == "complete"
    assert resumed["tracking"]["mlflow_run_id"] == summary["tracking"]["mlflow_run_id"]
    client, runs = store(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [step for step, _ in steps(client, runs[0].info.run_id, "loss")] == [1, 2, 3]


def test_a_store_that_fails_during_the_run_gives_one_warning_and_the_run_completes(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    log_batch = MlflowClient.log_batch

    def failing_after_the_parameters(self, run_id, metrics=(), params=(), **kwargs):
        calls["n"] += 1
        if metrics:
            raise mlflow.exceptions.MlflowException("the store went away")
        return log_batch(self, run_id, metrics=metrics, params=params, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", failing_after_the_parameters)
    monkeypatch.setattr(mlflow_log, "RETRY_SECONDS", 0.0)
    status, run_dir = train.train(quick_config(tmp_path, *TRACKED))
    out = capsys.readouterr().out
    assert status == 0 and atomic.read_json(os.path.join(run_dir, "summary.json"))["status"] == "complete"
    warnings = [line for line in out.splitlines() if "MLflow stopped answering" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING:") and "the store went away" in warnings[0]
    assert calls["n"] == 1 + mlflow_log.ATTEMPTS  # The parameters, then the first epoch's tries; nothing after.
    assert len(metrics_rows(run_dir)) == 2  # The run's folder holds every epoch.


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_server_is_refused_before_anything_is_made(tmp_path):
    env_uri = f"http://127.0.0.1:{free_port()}"
    result = run_cli_with_env(tmp_path, {"MLFLOW_TRACKING_URI": env_uri})
    assert result.returncode == exits.EXIT_USER_ERROR, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and env_uri in lines[0]
    assert "Traceback" not in result.stderr and not os.listdir(tmp_path)


def run_cli_with_env(output_dir, env):
    import subprocess
    import sys

    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *quick_sets(output_dir, *TRACKED)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env}, cwd=ROOT)


def test_without_mlflow_installed_the_error_names_the_requirements_file(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    status = train.main(quick_sets(tmp_path, *TRACKED))
    err = capsys.readouterr().err
    assert status == exits.EXIT_USER_ERROR
    assert err.startswith("error: output.tracking: mlflow needs the mlflow package") and mlflow_log.REQUIREMENTS in err
    assert len(err.strip().splitlines()) == 1 and not os.listdir(tmp_path)


def test_a_sweep_is_a_parent_run_with_a_child_run_per_setting(tmp_path):
    result = run_cli("sweep.py", "--grid", "loss.kl_weight=1,4", *quick_sets(tmp_path, *TRACKED))
    assert result.returncode == 0, result.stdout + result.stderr
    client, runs = store(tmp_path)  # One store for the sweep and its runs: the base output.dir's.
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert sorted(run.data.params["loss.kl_weight"] for run in children) == ["1.0", "4.0"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert "results.csv" in {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    folder = [name for name in os.listdir(tmp_path) if name.startswith("sweep_")][0]
    assert atomic.read_json(os.path.join(tmp_path, folder, mlflow_log.SWEEP_RECORD))["mlflow_run_id"] == \
        parent.info.run_id
    assert not os.path.exists(os.path.join(tmp_path, folder, "mlflow.db"))  # The children wrote to the sweep's store.


def test_flat_settings_and_numbers_are_what_mlflow_receives():
    assert mlflow_log.flat_settings({"loss": {"kl_weight": 1.0, "prior": {"scale": None}}}) == \
        {"loss.kl_weight": "1.0", "loss.prior.scale": "None"}
    assert mlflow_log.numbers({"a": 1, "b": True, "c": [0.5, 2], "d": "x", "e": [1, "y"]}) == \
        {"a": 1.0, "c_0": 0.5, "c_1": 2.0}
