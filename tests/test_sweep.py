"""sweep.py end to end: outputs, skipping finished runs, validation before training, resuming after a kill.

Runs are tiny (300 embedded digits, one or a few epochs, cheap evaluation) so the file takes
about a minute or two on two cores.
"""

import csv
import html.parser
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import runs  # noqa: E402
import sweep  # noqa: E402

QUICK = ["data.source=mnist_embedded", "data.limit=300", "train.epochs=1", "evaluation.iwae_k=2",
         "evaluation.max_examples=200", "output.per_epoch_images=false"]
TWO_SETTINGS = ["--grid", "loss.reconstruction_reduction=sum,mean"]
LABELS = ["reconstruction_reduction-sum", "reconstruction_reduction-mean"]


def sweep_command(output_dir, *args, sets=()):
    command = [sys.executable, os.path.join(ROOT, "sweep.py"), "--config", os.path.join(ROOT, "config.yaml")]
    for item in [*QUICK, f"output.dir={output_dir}", *sets]:
        command += ["--set", item]
    return command + list(args)


def run_sweep(output_dir, *args, sets=()):
    return subprocess.run(sweep_command(output_dir, *args, sets=sets), cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def read_results(folder):
    with open(os.path.join(folder, "results.csv"), encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


class ImageSources(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.external = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs.get("src", ""))
        if tag in ("link", "script") or (tag == "img" and not attrs.get("src", "").startswith("data:")):
            self.external.append(tag)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A two-setting, one-epoch sweep run with two workers: (output dir, sweep folder, first result)."""
    output_dir = tmp_path_factory.mktemp("sweep")
    result = run_sweep(output_dir, *TWO_SETTINGS, "--workers", "2", "--name", "pair")
    return output_dir, os.path.join(output_dir, "sweep_pair"), result


def test_sweep_writes_every_output(finished):
    _, folder, result = finished
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[2/2 finished]" in result.stdout
    for name in ("sweep.yaml", "results.csv", "results.md", "comparison.png", "rate_distortion.png", "report.html"):
        assert os.path.isfile(os.path.join(folder, name)), name
    for label in LABELS:
        assert os.path.isfile(os.path.join(folder, label, "model.keras"))
        assert os.path.isfile(os.path.join(folder, "logs", f"{label}.log"))
    rows = read_results(folder)
    assert [row["run"] for row in rows] == LABELS
    assert all(row["status"] == "complete" and row["collapsed"] in ("True", "False") for row in rows)
    assert [float(row["effective_beta"]) for row in rows] == pytest.approx([1.0, 784.0])
    assert all(float(row["wall_seconds"]) > 0 and float(row["neg_elbo_nats"]) > 0 for row in rows)
    with open(os.path.join(folder, "comparison.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    parser = ImageSources()
    with open(os.path.join(folder, "report.html"), encoding="utf-8") as handle:
        parser.feed(handle.read())
    assert len(parser.sources) == 2 and all(src.startswith("data:image/png;base64,") for src in parser.sources)
    assert parser.external == []


def test_rerun_trains_nothing_new(finished):
    output_dir, folder, _ = finished
    models = [os.path.join(folder, label, "model.keras") for label in LABELS]
    before = [os.path.getmtime(path) for path in models]
    result = run_sweep(output_dir, *TWO_SETTINGS, "--workers", "2", "--name", "pair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("skipped") == 2 and "started" not in result.stdout
    assert [os.path.getmtime(path) for path in models] == before
    assert not [name for name in os.listdir(folder) if name.endswith("-2")]
    assert len(read_results(folder)) == 2


def test_changed_settings_may_not_reuse_the_folder(finished):
    output_dir, folder, _ = finished
    result = run_sweep(output_dir, *TWO_SETTINGS, "--name", "pair", sets=["train.epochs=2"])
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "different sweep" in result.stderr


BAD_GRIDS = [["--grid", "loss.kl_weight=1,-1"], ["--grid", "loss.reconstruction_reduction=sum,median"],
             ["--grid", "loss.kl_weight="], ["--grid", "loss.kl_weight=1", "--grid", "loss.kl_weight=2"],
             ["--grid", "loss.no_such_key=1,2"], ["--grid", "loss.kl_weight"], []]


@pytest.mark.parametrize("grid", BAD_GRIDS)
def test_invalid_grid_fails_before_training(tmp_path, grid):
    result = run_sweep(tmp_path, *grid)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []  # No sweep folder, no run folder.


def test_grid_from_the_config_file_is_validated(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("sweep:\n  grid:\n    loss.kl_weight: [0.1, -2]\n", encoding="utf-8")
    command = sweep_command(tmp_path / "out")
    command[command.index("--config") + 1] = str(path)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "loss.kl_weight=-2" in result.stderr
    assert not (tmp_path / "out").exists()


def test_workers_share_the_cores():
    threads = str(max(1, runs.available_cores() // 2))
    env = sweep.child_env(2)
    assert [env[name] for name in sweep.THREAD_VARIABLES] == [threads] * 3


def test_killed_sweep_finishes_on_rerun(tmp_path):
    sets = ["train.epochs=4"]
    folder = tmp_path / "sweep_kill"
    first = folder / LABELS[0]
    process = subprocess.Popen(sweep_command(tmp_path, *TWO_SETTINGS, "--name", "kill", sets=sets), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            progress = runs.read_json(str(first / "state" / "progress.json")) or {}
            summary = runs.read_json(str(first / "summary.json")) or {}
            if max(progress.get("epochs_completed", 0), summary.get("epochs_completed", 0)) >= 1:
                break
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # The sweep and its train.py child, mid-run.
        process.wait()
    assert runs.run_status(str(first)) == "running", "the kill should land inside the first run"
    result = run_sweep(tmp_path, *TWO_SETTINGS, "--name", "kill", sets=sets)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_results(folder)
    assert sorted(row["run"] for row in rows) == sorted(LABELS)
    assert all(row["status"] == "complete" and row["epochs_completed"] == "4" for row in rows)
    assert not [name for name in os.listdir(folder) if name.endswith("-2")]
    with open(folder / "logs" / f"{LABELS[0]}.log", encoding="utf-8") as handle:
        assert "Resuming the unfinished run" in handle.read()
    epochs = [row["epoch"] for row in runs.read_csv_rows(str(first / "metrics.csv"))]
    assert epochs == [1, 2, 3, 4]
