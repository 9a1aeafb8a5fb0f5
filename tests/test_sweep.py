"""sweep.py end to end: outputs, skipping finished runs, validation before training, resuming after a kill.

Runs are tiny (300 embedded digits, one or a few epochs, cheap evaluation) so the file takes
about a minute or two on two cores.
"""

import csv
import html.parser
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sweep  # noqa: E402
from vae_kl.data import arrays  # noqa: E402
from vae_kl.process import exits, signals  # noqa: E402
from vae_kl.reports import sweep_page  # noqa: E402
from vae_kl.runs import folders, locks  # noqa: E402
from vae_kl.spec import config  # noqa: E402
from vae_kl.sweeps import executors, grid  # noqa: E402

QUICK = ["data.source=mnist_embedded", "data.limit=300", "train.epochs=1", "evaluation.iwae_k=2",
         "evaluation.max_examples=200", "output.per_epoch_images=false"]
TWO_SETTINGS = ["--grid", "loss.kl_weight=1,4"]  # A β grid, so test_frontier draws the frontier of this very sweep.
LABELS = ["kl_weight-1", "kl_weight-4"]
SEEDED = [*TWO_SETTINGS, "--seeds", "2"]  # Two settings × two seeds: four runs, the most the suite affords.
SEEDED_LABELS = [f"{label}_seed-{seed}" for label in LABELS for seed in (1337, 1338)]  # config.yaml: seed 1337.


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
    """Images, links, external resources and the text of every <th> and <td> of a page."""

    def __init__(self):
        super().__init__()
        self.sources, self.external, self.hrefs, self.cells, self.open = [], [], [], {"th": [], "td": []}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs.get("src", ""))
        if tag == "a":
            self.hrefs.append(attrs.get("href", ""))
        if tag in ("link", "script") or (tag == "img" and not attrs.get("src", "").startswith("data:")):
            self.external.append(tag)
        if tag in self.cells:
            self.open = tag
            self.cells[tag].append("")

    def handle_endtag(self, tag):
        if tag == self.open:
            self.open = None

    def handle_data(self, data):
        if self.open:
            self.cells[self.open][-1] += data


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two settings × two seeds, one epoch, two workers: (output dir, sweep folder, first result)."""
    output_dir = tmp_path_factory.mktemp("sweep")
    result = run_sweep(output_dir, *SEEDED, "--workers", "2", "--name", "pair")
    return output_dir, os.path.join(output_dir, "sweep_pair"), result


def test_sweep_writes_every_output(finished):
    _, folder, result = finished
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[4/4 finished]" in result.stdout
    for name in ("sweep.yaml", "results.csv", "results.md", "comparison.png", "rate_distortion.png", "report.html"):
        assert os.path.isfile(os.path.join(folder, name)), name
    for label in SEEDED_LABELS:
        assert os.path.isfile(os.path.join(folder, label, "model.keras"))
        assert os.path.isfile(os.path.join(folder, "logs", f"{label}.log"))
    rows = read_results(folder)  # One row per run: every setting once per seed.
    assert [row["run"] for row in rows] == SEEDED_LABELS
    assert [row["seed"] for row in rows] == ["1337", "1338"] * 2
    assert [row["setting"] for row in rows] == [f"kl_weight={w}" for w in (1, 1, 4, 4)]
    assert all(row["status"] == "complete" and row["collapsed"] in ("True", "False") for row in rows)
    assert all(row["collapse_state"] in ("healthy", "partial", "collapsed") for row in rows)
    assert [float(row["effective_beta"]) for row in rows] == pytest.approx([1.0, 1.0, 4.0, 4.0])
    assert all(float(row["wall_seconds"]) > 0 and float(row["neg_elbo_nats"]) > 0 for row in rows)
    with open(os.path.join(folder, "comparison.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_sweep_writes_tensorboard_hparams_and_each_run_its_metrics(finished):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, folder, _ = finished
    root = event_accumulator.EventAccumulator(folder, size_guidance={"tensors": 0})
    root.Reload()
    content = root.PluginTagToContent("hparams")
    assert content, "no HParams experiment at the sweep's root"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(next(iter(content.values()))).experiment
    assert {h.name for h in experiment.hparam_infos} >= {"loss.kl_weight", "train.seed"}
    assert "neg_elbo_nats" in {m.name.tag for m in experiment.metric_infos}
    for label in SEEDED_LABELS:  # Each run's final β = 1 numbers, the dashboard's metric columns.
        run = event_accumulator.EventAccumulator(os.path.join(folder, label, "tensorboard", "evaluation"),
                                                 size_guidance={"tensors": 0})
        run.Reload()
        assert "neg_elbo_nats" in run.Tags()["tensors"]


def test_results_md_aggregates_over_seeds(finished):
    _, folder, _ = finished
    rows = read_results(folder)
    with open(os.path.join(folder, "results.md"), encoding="utf-8") as handle:
        text = handle.read()
    assert text.startswith("# Sweep 'pair': 2 settings × 2 seeds")
    for setting in ("1", "4"):
        values = [float(row["neg_elbo_nats"]) for row in rows if row["setting"].endswith(f"={setting}")]
        states = [row["collapse_state"] for row in rows if row["setting"].endswith(f"={setting}")]
        expected = f"{np.mean(values):.2f} ± {np.std(values, ddof=1) / np.sqrt(2):.2f}"
        line = next(line for line in text.splitlines() if line.startswith(f"| {setting} |"))
        assert expected in line and "2 of 2" in line
        assert f"{max(states, key=states.count).upper()} in {states.count(max(states, key=states.count))} of 2" in line
    assert text.count("_seed-") >= 8  # The per-run table: each run and its log.


def test_report_html_reads_at_a_glance(finished):
    _, folder, _ = finished
    parser = ImageSources()
    with open(os.path.join(folder, "report.html"), encoding="utf-8") as handle:
        parser.feed(handle.read())
    assert parser.external == []
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)
    assert len(parser.sources) == 2 + len(SEEDED_LABELS)  # Both figures and a thumbnail per run.
    headers, cells = parser.cells["th"], [text.strip() for text in parser.cells["td"]]
    assert headers and not [h for h in headers if "_" in h], headers
    assert not [text for text in cells if text in ("True", "False")]
    for label in SEEDED_LABELS:
        assert f"{label}/" in parser.hrefs and f"logs/{label}.log" in parser.hrefs
        assert os.path.isdir(os.path.join(folder, label))
        assert os.path.isfile(os.path.join(folder, "logs", f"{label}.log"))
    assert any(text.startswith(("COLLAPSED", "HEALTHY", "PARTIAL")) and "of 2" in text for text in cells)


def test_rerun_trains_nothing_new(finished):
    output_dir, folder, _ = finished
    models = [os.path.join(folder, label, "model.keras") for label in SEEDED_LABELS]
    before = [os.path.getmtime(path) for path in models]
    result = run_sweep(output_dir, *SEEDED, "--workers", "2", "--name", "pair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("skipped") == 4 and "started" not in result.stdout
    assert [os.path.getmtime(path) for path in models] == before
    assert not [name for name in os.listdir(folder) if name.endswith("-2")]
    assert len(read_results(folder)) == 4


def test_the_frontier_of_a_finished_sweep_trains_nothing(finished, tmp_path):
    """The fixture's β grid (1, 4) × 2 seeds, re-run with --frontier in a copy: nothing trains, the frontier is
    drawn, one of its runs is placed beside it, and a distortion between the two βs' is given a β between them."""
    output_dir, folder, _ = finished
    copy = tmp_path / "sweep_pair"
    shutil.copytree(folder, copy)
    placed = copy / SEEDED_LABELS[0]
    result = run_sweep(tmp_path, *SEEDED, "--workers", "2", "--name", "pair", "--frontier", "--place", str(placed),
                       "--target-distortion", str(np.mean(distortions(copy))))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("skipped") == 4 and "started" not in result.stdout
    assert (copy / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (copy / "frontier.md").read_text(encoding="utf-8")
    assert "| 1 | 2 of 2 |" in page and "| 4 | 2 of 2 |" in page and "--frontier --place" in page
    assert "is reached at β ≈" in page  # The mean of the four distortions lies between the two settings' means.
    report = (copy / "report.html").read_text(encoding="utf-8")
    assert "Rate–distortion frontier" in report and report.count("data:image/png;base64,") == 2 + 4 + 1
    assert not os.path.exists(os.path.join(folder, "frontier.md"))  # The fixture's own folder is untouched.


def distortions(folder):
    return [float(row["reconstruction_nats"]) for row in read_results(folder)]


def test_changed_settings_may_not_reuse_the_folder(finished):
    output_dir, folder, _ = finished
    result = run_sweep(output_dir, *SEEDED, "--name", "pair", sets=["train.epochs=2"])
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "different sweep" in result.stderr


BAD_GRIDS = [["--grid", "loss.kl_weight=1,-1"], ["--grid", "loss.reconstruction_reduction=sum,median"],
             ["--grid", "loss.kl_weight="], ["--grid", "loss.kl_weight=1", "--grid", "loss.kl_weight=2"],
             ["--grid", "loss.no_such_key=1,2"], ["--grid", "loss.kl_weight"], [],
             ["--grid", "loss.kl_weight=1", "--seeds", "0"], ["--grid", "train.seed=1,2", "--seeds", "2"]]


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


# ---- --backend ray: the same runs as Ray tasks on a local Ray instance --------------------------------

COMPARED = ("setting", "seed", "effective_beta", "status", "epochs_completed", "neg_elbo_nats", "iwae_nll_nats",
            "kl_nats", "active_units", "collapse_state", "collapsed")


def test_ray_backend_gives_the_local_backends_results(tmp_path, finished):
    pytest.importorskip("ray")  # .ci/run installs it (requirements-cluster.txt).
    _, local_folder, _ = finished
    # One of the fixture's settings: Ray's start and one run are what is tested; a second run adds only time.
    result = run_sweep(tmp_path, "--grid", "loss.kl_weight=4", "--workers", "2", "--name", "pair", "--backend", "ray")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"with Ray tasks of {max(1, signals.available_cores() // 2)} CPU(s)" in result.stdout
    assert "[1/1 finished]" in result.stdout
    folder = os.path.join(tmp_path, "sweep_pair")
    for name in ("sweep.yaml", "results.csv", "results.md", "comparison.png", "rate_distortion.png", "report.html"):
        assert os.path.isfile(os.path.join(folder, name)), name
    rows = read_results(folder)
    assert [row["run"] for row in rows] == LABELS[1:]
    assert [row["log"] for row in rows] == [f"logs/{LABELS[1]}.log"]
    # The local fixture's seed-1337 runs have exactly these settings (the grid's seed is config.yaml's).
    local = {row["run"]: row for row in read_results(local_folder)}
    for row in rows:
        twin = local[f"{row['run']}_seed-1337"]
        assert {key: row[key] for key in COMPARED} == {key: twin[key] for key in COMPARED}, row["run"]
        with open(os.path.join(folder, row["log"]), encoding="utf-8") as handle:
            assert "train.py --config" in handle.readline()  # The log starts with the command, as locally.
    # Finished runs are skipped before any backend starts (runner.run_all): test_rerun_trains_nothing_new.


def test_ray_backend_without_ray_is_one_error_line(tmp_path):
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named ray')\n", encoding="utf-8")
    command = sweep_command(tmp_path / "out", *TWO_SETTINGS, "--backend", "ray")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path / "shim")))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --backend ray needs the ray package")
    assert "requirements-cluster.txt" in result.stderr
    assert not (tmp_path / "out").exists()


def test_more_gpus_than_the_local_ray_instance_has_is_one_line_and_nothing_else(tmp_path):
    pytest.importorskip("ray")
    command = sweep_command(tmp_path / "out", *TWO_SETTINGS, "--backend", "ray", "--gpus-per-run", "1")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""  # Ray's "INFO worker.py ... Connecting to existing Ray cluster" lines included.
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --gpus-per-run 1 asks for more GPUs")
    assert not (tmp_path / "out").exists()


def test_ray_only_options_are_refused_with_the_local_backend(tmp_path):
    result = run_sweep(tmp_path, *TWO_SETTINGS, "--address", "auto")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "--backend ray only" in result.stderr
    assert os.listdir(tmp_path) == []


def test_workers_share_the_cores():
    threads = str(max(1, signals.available_cores() // 2))
    env = executors.thread_overrides(executors.threads_per_run(2))
    assert [env[name] for name in executors.THREAD_VARIABLES] == [threads] * 3


def make_row(setting, beta, seed, neg_elbo, state="healthy", status="complete", kl=1.0):
    done = status == "complete"
    return {"run": f"{setting}_seed-{seed}", "setting": setting, "seed": seed, "effective_beta": beta,
            "status": status, "neg_elbo_nats": neg_elbo if done else None,
            "iwae_nll_nats": neg_elbo - 1 if done else None,
            "kl_nats": kl if done else None, "reconstruction_nats": neg_elbo - kl if done else None,
            "active_units": 2 if done else None, "collapse_state": state if done else None,
            "collapsed": state == "collapsed" if done else None, "log": f"logs/{setting}_seed-{seed}.log"}


def seeded(setting, beta, neg_elbos, states):
    return [make_row(setting, beta, 1 + i, value, state) for i, (value, state) in enumerate(zip(neg_elbos, states))]


def test_aggregate_matches_numpy():
    values = [180.0, 183.5, 179.25]
    rows = seeded("a", 1.0, values, ["healthy", "collapsed", "partial"]) + seeded("b", 10.0, [200.0], ["collapsed"])
    a, b = sweep_page.aggregate(rows)
    assert (a["setting"], a["n"], a["planned"], a["collapsed"]) == ("a", 3, 3, 1)
    assert a["neg_elbo_nats"][0] == pytest.approx(np.mean(values))
    assert a["neg_elbo_nats"][1] == pytest.approx(np.std(values, ddof=1) / np.sqrt(3))
    assert a["states"] == {"collapsed": 1, "partial": 1, "healthy": 1}
    assert sweep_page.state_text(a) == "COLLAPSED in 1 of 3, PARTIAL in 1 of 3, HEALTHY in 1 of 3"
    assert b["neg_elbo_nats"] == (200.0, None) and sweep_page.state_text(b) == "COLLAPSED"


def test_collapse_state_reads_state_and_falls_back_to_detected():
    assert sweep_page.collapse_state({"detected": False, "state": "partial"}) == "partial"
    assert sweep_page.collapse_state({"detected": True}) == "collapsed"
    assert sweep_page.collapse_state({"detected": False}) == "healthy"
    assert sweep_page.collapse_state({}) is None


def test_findings_all_collapsed():
    rows = seeded("x", 100.0, [205, 205], ["collapsed"] * 2) + seeded("y", 784.0, [205, 205], ["collapsed"] * 2)
    assert "Every setting collapsed in every seed, even the smallest effective β tried (β = 100)" in \
        sweep_page.findings(rows)


def test_findings_none_collapsed():
    rows = seeded("x", 0.1, [178, 179], ["healthy"] * 2) + seeded("y", 1.0, [181, 182], ["partial"] * 2)
    assert "No setting collapsed in any seed" in sweep_page.findings(rows)


def test_findings_clean_threshold():
    rows = (seeded("low", 0.1, [178, 179], ["healthy"] * 2) + seeded("mid", 10.0, [176, 190], ["healthy", "collapsed"])
            + seeded("high", 78.4, [205, 205], ["collapsed"] * 2) + seeded("top", 784.0, [205, 205], ["collapsed"] * 2))
    text = sweep_page.findings(rows)
    assert "Collapse follows effective β: every setting with β ≥ 78.4 collapsed in all seeds, every setting with " \
           "β ≤ 0.1 in none." in text
    assert "mid (β = 10) collapsed in 1 of 2" in text


def test_findings_non_monotone():
    rows = seeded("small", 10.0, [205, 205], ["collapsed"] * 2) + seeded("large", 100.0, [180, 181], ["healthy"] * 2)
    text = sweep_page.findings(rows)
    assert "Effective β alone does not decide collapse" in text and "follows" not in text


def test_findings_separates_noise_from_real_differences():
    within = seeded("a", 1.0, [180.0, 182.0, 181.0], ["healthy"] * 3) + seeded("b", 0.1, [181.0, 183.0, 181.5],
                                                                                 ["healthy"] * 3)
    text = sweep_page.findings(within)
    assert "The lowest mean −ELBO (the β = 1 objective, lower is better) is 181.00 ± 0.58 nats/digit (3 seeds), by a" \
        in text
    assert "Within seed noise of it" in text and "b (181.83 ± 0.60)" in text
    apart = within[:3] + seeded("b", 0.1, [190.0, 191.0, 190.5], ["healthy"] * 3)
    text = sweep_page.findings(apart)
    assert "It beats the next best, b (190.50 ± 0.29), by 9.50 nats" in text and "Within seed noise" not in text


def test_findings_with_a_failed_run():
    rows = seeded("a", 1.0, [180, 181], ["healthy"] * 2) + [make_row("b", 784.0, 1, 0, status="failed"),
                                                             make_row("b", 784.0, 2, 205, state="collapsed")]
    text = sweep_page.findings(rows)
    assert "Not finished: b_seed-1 (failed, see logs/b_seed-1.log)." in text
    assert "Collapse follows effective β: every setting with β ≥ 784 collapsed in all seeds" in text
    assert sweep_page.aggregate(rows)[1]["n"] == 1 and sweep_page.aggregate(rows)[1]["planned"] == 2
    assert sweep_page.findings([make_row("b", 1.0, 1, 0, status="failed")]).startswith("No run has finished")


def test_a_sweep_folder_of_an_earlier_version_is_recognised_with_the_new_fields_at_their_defaults():
    from vae_kl.spec import config

    wanted = {"grid": {"loss.kl_weight": [1, 10]}, "base": grid.sweep_base(config.Config().to_dict())}
    older = {"grid": wanted["grid"], "base": {k: dict(v) for k, v in wanted["base"].items()}}
    del older["base"]["train"]["precision"], older["base"]["output"]["tensorboard"]  # Fields added later.
    assert grid.same_sweep(older, wanted)
    older["base"]["train"]["epochs"] = 3
    assert not grid.same_sweep(older, wanted)
    assert not grid.same_sweep(["not", "a", "spec"], wanted)


def test_a_run_started_by_an_earlier_version_resumes(tmp_path):
    from vae_kl.spec import config

    cfg = config.Config().to_dict()
    stored = {k: dict(v) for k, v in cfg.items()}
    del stored["train"]["precision"]
    (tmp_path / "config.yaml").write_text(__import__("yaml").safe_dump(stored))
    assert folders._same_settings(str(tmp_path), cfg)


# ---- The local Ray instance ends with the sweep, however the sweep ends (SIGKILL too) ---------------------

def group_members(pgid):
    """The pids of live processes in process group pgid (from /proc; Linux)."""
    members = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp: a zombie is already gone.
            members.append(int(name))
    return members


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process groups from /proc")
def test_a_sigkilled_sweep_leaves_no_ray_process_behind():
    pytest.importorskip("ray")
    # The "sweep": a process that starts the local instance, connects to it as sweep.py does, says where its
    # processes are, and waits to be killed.
    script = (f"import os, sys; sys.path.insert(0, {ROOT!r}); import secrets\n"
              "os.environ.update(RAY_AUTH_MODE='token', RAY_AUTH_TOKEN=secrets.token_hex(32))\n"
              "import ray\n"
              "from vae_kl.sweeps import executors\n"
              "head = executors.LocalRayHead(1)\n"
              "ray.init(address=head.address, include_dashboard=False, log_to_driver=False)\n"
              "print(os.getpgid(head.keeper.pid), flush=True); sys.stdin.read()\n")
    driver = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, RAY_KEEPER_GRACE="2"))
    pgid = None
    try:
        pgid = int(driver.stdout.readline())
        # Ray's head, its raylet and their agents (the processes ray.init's own instance leaves alive).
        assert len(group_members(pgid)) >= 4
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 30
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(pgid) == []
    finally:
        driver.kill()
        if pgid and group_members(pgid):  # Whatever a failure left, so that the rest of the suite runs.
            os.killpg(pgid, signal.SIGKILL)


# ---- One error path: the sweep ends every fault in one `error:` line and runs' exit statuses -----------

def test_a_bad_data_path_is_refused_before_any_run_starts(tmp_path):
    result = run_sweep(tmp_path, *TWO_SETTINGS, "--set", "data.source=npz", "--set",
                       f"data.path={tmp_path / 'missing.npz'}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: data.path") and result.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fault, status", [(OSError(28, "No space left on device"), exits.EXIT_ENVIRONMENT),
                                           (arrays.DataError("the digits are gone"), exits.EXIT_USER_ERROR)])
def test_a_fault_while_sweeping_is_one_error_line_and_its_status(tmp_path, monkeypatch, capsys, fault, status):
    # Raised where the sweep prepares its folder (the report, a disk, the data: the same path for all).
    def fail(plan):
        raise fault

    monkeypatch.setattr(grid, "prepare_folder", fail)
    code = sweep.main(["--config", os.path.join(ROOT, "config.yaml"), *TWO_SETTINGS,
                       "--set", f"output.dir={tmp_path}", "--set", "data.source=mnist_embedded"])
    error = capsys.readouterr().err
    assert code == status and error.startswith("error: ") and error.count("\n") == 1, error


def test_a_second_sweep_into_a_folder_being_swept_is_refused(tmp_path, capsys):
    # The first sweep holds the folder's lock (as while it trains); the same command from elsewhere is refused.
    args = ["--config", os.path.join(ROOT, "config.yaml"), *TWO_SETTINGS, "--name", "busy",
            "--set", f"output.dir={tmp_path}", "--set", "data.source=mnist_embedded"]
    holder = locks.lock_folder(str(tmp_path / "sweep_busy"), "{folder} {owner}")
    try:
        assert sweep.main(args) == 2
    finally:
        holder.close()
    error = capsys.readouterr().err
    assert f"is being swept by process {os.getpid()}" in error and error.count("\n") == 1
    assert sorted(os.listdir(tmp_path / "sweep_busy")) == [locks.LOCK_FILE]  # Nothing planned was written.


def test_a_sweep_of_too_many_runs_is_refused_before_planning(tmp_path, capsys):
    args = ["--config", os.path.join(ROOT, "config.yaml"), "--grid", "loss.kl_weight=1,2,3", "--seeds", "5000",
            "--set", f"output.dir={tmp_path}"]
    assert sweep.main(args) == 2
    error = capsys.readouterr().err
    assert "The sweep has 15000 runs" in error and error.count("\n") == 1
    assert sweep.main([*args[:-4], "--seeds", "1000000", *args[-2:]]) == 2
    assert "--seeds must be at most 10000" in capsys.readouterr().err


def test_a_ray_address_nobody_answers_at_is_refused_within_its_bound(tmp_path):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as closed:  # A port on this machine with nobody listening.
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = run_sweep(tmp_path, *TWO_SETTINGS, "--backend", "ray", "--address", f"127.0.0.1:{port}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the Ray cluster at 127.0.0.1:{port} did not answer within 5 s" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "sweep_kl_weight_").exists()


def test_a_run_asking_for_more_than_the_cluster_has_is_refused():
    class FakeRay:
        stopped = False

        def cluster_resources(self):
            return {"CPU": 2.0}

        def shutdown(self):
            self.stopped = True

    ray = FakeRay()
    with pytest.raises(config.ConfigError, match="--gpus-per-run 1 asks for more GPUs than the Ray cluster"):
        executors.check_resources(ray, 1, 1)
    with pytest.raises(config.ConfigError, match="--cpus-per-run 64 asks for more CPUs"):
        executors.check_resources(ray, 64, 0)
    assert ray.stopped
    executors.check_resources(FakeRay(), 2, 0)  # What the cluster has is fine.


def test_seeds_of_one_setting_that_collapse_in_some_are_said_plainly():
    # No setting collapsed always or never: nothing lies "in between", and no empty "follows effective β" is said.
    measured = [{"setting": "base config", "beta": 1.0, "collapsed": 2, "n": 3}]
    assert sweep_page.collapse_words(measured) == [
        "Collapse depends on the seed: base config (β = 1) collapsed in 2 of 3."]
