"""Reliability: survive SIGKILL and Ctrl-C, stop on divergence, refuse bad data and bad paths."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import train
from conftest import ROOT, interrupting_callback, quick_config, quick_sets
from vae_kl.process import exits
from vae_kl.spec import config

# A GECO run: its multiplier is held through epoch 1, released when the reconstruction reaches κ in epoch 2,
# and moves every epoch after. Resumed, it must go on from its checkpoint's multiplier, or the `beta` and loss
# columns would differ from the uninterrupted run's.
RESUME_SETTINGS = ["data.limit=1000", "train.epochs=4", "train.deterministic=true", "output.per_epoch_images=true",
                   "loss.kl_weight=auto", "loss.target_distortion=270", "loss.geco_rate=0.05",
                   "loss.geco_smoothing=0.5"]


def read_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as handle:
        return list(csv.DictReader(handle))


def read_summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as handle:
        return json.load(handle)


def epochs_done(run_dir):
    try:
        with open(os.path.join(run_dir, "state", "progress.json")) as handle:
            return json.load(handle)["epochs_completed"]
    except (OSError, ValueError):
        return 0


def start_training(args):
    # The child starts with Ctrl-C's default action, as under a terminal: something earlier in a full pytest
    # session can leave SIGINT ignored in this process, and an ignored signal is inherited (train.py then
    # rightly keeps ignoring it, as it does under `nohup`).
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_epochs(process, run_dir, count, timeout=240):
    deadline = time.time() + timeout
    while epochs_done(run_dir) < count:
        assert process.poll() is None, process.stdout.read()[-2000:]
        assert time.time() < deadline, "training did not reach the epoch in time"
        time.sleep(0.05)


def comparable(rows):
    return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The uninterrupted run that every interrupted-and-resumed run of RESUME_SETTINGS must reproduce, trained
    in this process (a fresh train.py process trains the same numbers: deterministic ops, the same batches)."""
    out = tmp_path_factory.mktemp("whole")
    summary = train.run(quick_config(out, *RESUME_SETTINGS, "output.run_name=whole"))
    assert summary["status"] == "complete"
    return out / "whole", summary


def test_sigkill_then_rerun_finishes_with_each_epoch_once_and_equal_metrics(tmp_path, whole_run, capsys):
    killed = quick_sets(tmp_path, *RESUME_SETTINGS, "output.run_name=killed")
    process = start_training(killed)
    wait_for_epochs(process, tmp_path / "killed", 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_summary(tmp_path / "killed")["status"] == "running"  # What a killed process leaves behind.
    checkpointed = read_rows(tmp_path / "killed")[-1]
    capsys.readouterr()
    assert train.main(killed) == 0  # The rerun: the same command (here in this process; the kill is what needs one).
    assert "Resuming the unfinished run" in capsys.readouterr().out
    rows, whole_rows = read_rows(tmp_path / "killed"), read_rows(whole_run[0])
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert comparable(rows) == comparable(whole_rows)  # From the checkpoint's multiplier on: the same βs.
    assert rows[int(checkpointed["epoch"]) - 1]["beta"] == checkpointed["beta"]
    assert float(whole_rows[0]["beta"]) == 1 and len({row["beta"] for row in whole_rows}) == 4  # Held, then moving.
    assert read_summary(tmp_path / "killed")["status"] == "complete"
    assert len(os.listdir(tmp_path / "killed" / "epochs")) == 4
    assert not os.path.exists(tmp_path / "killed-2")


def test_ctrl_c_marks_the_run_interrupted_and_it_resumes(tmp_path):
    args = quick_sets(tmp_path, "data.limit=1000", "train.epochs=3", "output.run_name=ctrlc")
    process = start_training(args)
    wait_for_epochs(process, tmp_path / "ctrlc", 1)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output[-2000:]
    assert "Run the same command again to resume" in output
    assert read_summary(tmp_path / "ctrlc")["status"] == "interrupted"
    assert train.main(args) == 0  # The same command again (in this process: the signal is what needs one).
    assert [int(r["epoch"]) for r in read_rows(tmp_path / "ctrlc")] == [1, 2, 3]
    assert read_summary(tmp_path / "ctrlc")["status"] == "complete"


def test_divergence_stops_with_a_message(tmp_path, capsys):
    status = train.main(quick_sets(tmp_path, "train.learning_rate=10", "train.epochs=3", "output.run_name=boom"))
    err = capsys.readouterr().err
    assert status == exits.EXIT_DIVERGED
    assert "diverged" in err and "train.learning_rate 10 is high" in err
    summary = read_summary(tmp_path / "boom")
    assert summary["status"] == "diverged" and summary["diverged"]["message"]
    assert not os.path.exists(tmp_path / "boom" / "model.keras")


class PoisoningCallback(keras.callbacks.Callback):
    """After the first epoch is recorded (the run's recorder comes first), turn every weight into NaN."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            for weight in self.model.trainable_weights:
                weight.assign(weight * float("nan"))


def test_divergence_after_a_good_epoch_keeps_that_epochs_checkpoint(tmp_path):
    cfg = quick_config(tmp_path, "train.epochs=3", "output.run_name=poison")
    status, run_dir = train.train(cfg, callbacks=[PoisoningCallback()])
    assert status == exits.EXIT_DIVERGED
    assert read_summary(run_dir)["status"] == "diverged"
    assert [int(r["epoch"]) for r in read_rows(run_dir)] == [1]
    assert os.path.exists(os.path.join(run_dir, "state", "checkpoint.weights.h5"))


def test_an_interrupted_run_resumes_to_the_uninterrupted_runs_metrics(tmp_path, whole_run):
    whole_dir, whole = whole_run
    cfg = quick_config(tmp_path, *RESUME_SETTINGS, "output.run_name=cut")
    status, run_dir = train.train(cfg, callbacks=[interrupting_callback(after=2)])
    assert status == exits.EXIT_INTERRUPTED and read_summary(run_dir)["status"] == "interrupted"
    assert [int(r["epoch"]) for r in read_rows(run_dir)] == [1, 2]
    resumed = train.run(cfg)
    assert resumed["status"] == "complete" and resumed["epochs_completed"] == 4
    assert comparable(read_rows(run_dir)) == comparable(read_rows(whole_dir))
    assert resumed["validation"]["neg_elbo_nats"] == pytest.approx(whole["validation"]["neg_elbo_nats"], rel=1e-6)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def good_arrays(n=300):
    """Real digits in the keras.datasets layout: uint8 (N, 28, 28) images and int labels."""
    from vae_kl.data import sources

    digits = sources.load_digits(config.DataConfig(source="mnist_embedded"), seed=0)
    return {"x_train": (digits.x_train[:n, ..., 0] * 255).astype("uint8"), "y_train": digits.y_train[:n],
            "x_test": (digits.x_val[:100, ..., 0] * 255).astype("uint8"), "y_test": digits.y_val[:100]}


def test_a_valid_npz_trains(tmp_path):
    arrays = good_arrays()
    path = write_npz(tmp_path / "digits.npz", **arrays)
    assert train.main(quick_sets(tmp_path / "out", "data.source=npz", f"data.path={path}")) == 0  # Later --set wins.
    (run,) = os.listdir(tmp_path / "out")
    assert read_summary(tmp_path / "out" / run)["dataset"] == f"npz:{path}"


@pytest.mark.parametrize("change, fragment", [
    ({"x_train": None}, "lacks x_train"),
    ({"x_train": np.zeros((5, 30, 30))}, "H and W must be divisible by 4"),
    ({"x_train": np.zeros((5, 32, 32))}, "x_train images are 32×32×1 but x_test images are 28×28×1"),
    ({"x_train": np.full((300, 28, 28), 300.0)}, "pixels must lie in [0, 1] or [0, 255]"),
    ({"x_train": np.full((300, 28, 28), np.nan)}, "NaN"),
    ({"y_train": np.zeros(7, "int64")}, "must be 300 integer labels"),
    ({"x_test": np.array(["a"] * 5)}, "must hold numbers"),
    ({"x_train": np.array([{"evil": 1}] * 3, dtype=object)}, "pickled objects"),
])
def test_bad_npz_files_are_refused_with_exit_2(tmp_path, capsys, change, fragment):
    arrays = good_arrays()
    for key, value in change.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path = write_npz(tmp_path / "bad.npz", **arrays)
    status = train.main(["--set", "data.source=npz", "--set", f"data.path={path}",
                         "--set", f"output.dir={tmp_path / 'out'}"])
    assert status == 2
    err = capsys.readouterr().err
    assert fragment in err and "bad.npz" in err
    assert not os.path.exists(tmp_path / "out")


def test_a_corrupt_npz_is_refused(tmp_path, capsys):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip file")
    assert train.main(["--set", "data.source=npz", "--set", f"data.path={path}"]) == 2
    assert "is not a readable .npz file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "a/b", ".."])
def test_run_names_cannot_escape_the_output_folder(tmp_path, capsys, name):
    status = train.main(quick_sets(tmp_path / "out", f"output.run_name={name}"))
    assert status == 2
    assert "must be a plain folder name" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "evil") and not os.path.exists(tmp_path / "out" / "a")


def test_an_unwritable_output_folder_is_reported_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert train.main(quick_sets(blocker / "out")) == 2
    assert "Cannot write to output.dir" in capsys.readouterr().err


def test_an_unfinished_run_with_other_settings_is_not_touched(tmp_path, capsys):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("train: {epochs: 99}\n")
    (run_dir / "summary.json").write_text('{"status": "running"}')
    assert train.main(quick_sets(tmp_path, "output.run_name=taken")) == 2
    assert "holds an unfinished run with different settings" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_text() == "train: {epochs: 99}\n"
