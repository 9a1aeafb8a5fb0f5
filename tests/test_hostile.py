"""Hostile input (issue #13, round two): unbounded values, YAML bombs, odd run names, two processes
in one run folder, a sweep killed under its children, and values that repeat or mean nothing."""

import csv
import errno
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

import evaluate
import sweep
import train
from conftest import ROOT, quick_config, quick_sets, run_cli
from vae_kl.process import atomic, exits, signals
from vae_kl.reports import run_figures
from vae_kl.runs import folders, locks, records
from vae_kl.spec import config, meaning
from vae_kl.sweeps import executors, grid, runner

FLOAT32_MAX = 3.4028234663852886e38


def refused(*overrides):
    with pytest.raises(config.ConfigError) as error:
        config.load(None, list(overrides))
    message = str(error.value)
    assert "\n" not in message and len(message) < 400
    return message


@pytest.mark.parametrize("overrides, fragment", [
    (["train.seed=4294967296"], "train.seed must be < 4294967296"),
    (["evaluation.iwae_k=1000000"], "evaluation.iwae_k must be <= 100000"),
    (["loss.kl_weight=1e308", "loss.reconstruction_reduction=mean"], "loss.kl_weight must be <= 1000000.0"),
    (["loss.kl_weight=null", "loss.kl_weight_norm=1e300"], "loss.kl_weight_norm must be <= 1000000.0"),
    (["loss.likelihood=gaussian", "loss.gaussian_sigma=1e200"], "loss.gaussian_sigma must be <= 1000.0"),
    (["loss.kl_weight=" + "9" * 400], "expects a finite number, received <an integer of about 400 digits>"),
    (["loss.free_bits=1e308"], "loss.free_bits must be <= 100"),
    (["loss.kl_cycles=" + "9" * 30], "loss.kl_cycles must be <= 100000"),
    (["loss.kl_warmup=" + "9" * 30], "loss.kl_warmup must be <= 1000000000"),
    (["train.steps_per_execution=" + "9" * 30], "train.steps_per_execution must be <= 100000"),
    (["data.limit=" + "9" * 30], "data.limit must be <= 1000000000"),
    (["evaluation.max_examples=" + "9" * 30], "evaluation.max_examples must be <= 1000000000"),
    (["loss.gaussian_sigma=0.1"], "loss.gaussian_sigma is only read by loss.likelihood gaussian"),
    (["loss.gaussian_sigma=optimal", "loss.likelihood=continuous_bernoulli"], "only read by loss.likelihood gaussian"),
])
def test_unbounded_and_meaningless_values_are_refused_in_one_line(overrides, fragment):
    assert fragment in refused(*overrides)


def test_the_bounds_keep_every_derived_quantity_finite_in_float32():
    """The worst corners the bounds allow, through objective.py's own formulas."""
    from vae_kl.spec import objective

    NUM_PIXELS = 28 * 28  # MNIST's D.

    bound = {name: setting.rule.get("le") for section in (config.LossConfig, config.ModelConfig)
             for name, setting in section.settings().items()}
    weight, norm, sigma = bound["kl_weight"], bound["kl_weight_norm"], bound["gaussian_sigma"]
    for latent_dim in (1, bound["latent_dim"]):
        for rec in ("sum", "mean"):
            for kl in ("sum", "mean"):
                for kl_weight, kl_weight_norm in ((weight, None), (None, norm)):
                    lam = objective.resolve_kl_weight(kl_weight, kl_weight_norm, rec, kl, latent_dim, NUM_PIXELS)
                    got = meaning.describe(rec, kl, lam, latent_dim, NUM_PIXELS, "gaussian", {"sigma": sigma})
                    for key in ("effective_beta", "beta_norm", "kl_weight", "sse_equivalent_beta"):
                        assert abs(got[key]) < FLOAT32_MAX / 1e6, (rec, kl, latent_dim, key, got[key])
                    assert math.isfinite(lam)


def test_a_bad_seed_in_a_sweep_exits_2_before_anything_is_created(tmp_path, capsys):
    status = sweep.main(["--grid", "train.seed=1,4294967296", "--set", f"output.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "train.seed must be < 4294967296" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("grid, fragment", [
    ("loss.kl_weight=1,1.0", "Grid key loss.kl_weight repeats a value: 1 and 1.0"),
    ("train.learning_rate=0.001,1e-3", "repeats a value"),
    ("train.epochs=2,2", "repeats a value: 2 and 2"),
])
def test_grid_values_that_mean_the_same_are_refused(tmp_path, capsys, grid, fragment):
    assert sweep.main(["--grid", grid, "--set", f"output.dir={tmp_path}"]) == 2
    assert fragment in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


LAUGHS = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


@pytest.mark.parametrize("text, fragment", [
    (LAUGHS, "refused at line 5: aliases expand to more than 10000 values"),
    ("a: &a [*a]\n", "an alias refers to a value that contains it"),
    ("train:\n  epochs: 3\n  epochs: 4\n", "refused at line 3: duplicate key 'epochs' (first given at line 2)"),
    ("[" * 100000, "values nest more than 50 levels deep"),
    ("train: {seed: " + "9" * 5000 + "}\n", "an integer with too many digits"),
    ("loss:\n  kl_weight: 1\x01\n", "is not valid YAML at character 21: special characters are not allowed"),
    ("loss: {likelihood: " + "x" * 1100000 + "}\n", "larger than 1024 KiB"),
    ("loss: {likelihood: " + "x" * 1000000 + "}\n", "received 'xxxxxxx"),  # Just under the size limit.
    ("loss:\n  ? " + "k" * 900000 + "\n  : 1\n", "Unknown config key 'loss.kkkkk"),
], ids=["laughs", "recursive", "duplicate", "deep", "long-int", "control", "big-file", "long-value", "long-key"])
def test_yaml_bombs_and_huge_values_are_refused_quickly_in_one_line(tmp_path, text, fragment):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as error:
        config.load(str(path))
    message = str(error.value)
    assert fragment in message
    assert "\n" not in message and len(message) < 400


def test_merge_keys_are_not_mistaken_for_duplicates(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {epochs: 3, batch_size: 64}\ntrain: {<<: *base, epochs: 4}\n")
    assert config.read_yaml(str(path))["train"] == {"epochs": 4, "batch_size": 64}


def test_set_and_grid_values_go_through_the_bounded_loader(tmp_path, capsys):
    bomb = "[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]," \
           " [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]]"
    assert "aliases expand to more than 10000 values" in refused("loss.kl_weight=" + bomb)
    assert "duplicate key 'a'" in refused("loss.likelihood={a: 1, a: 2}")
    assert sweep.main(["--grid", "loss.likelihood=a: 1\na: 2", "--set", f"output.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "duplicate key 'a'" in err and err.count("\n") == 1


def test_a_yaml_reader_error_prints_exactly_one_line(tmp_path):
    path = tmp_path / "control.yaml"
    path.write_bytes(b"train:\n  epochs: \x07\n")
    result = run_cli("train.py", "--config", str(path), "--set", f"output.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, fragment", [
    ("x" * 300, "is 300 characters long; use at most 100"),
    ("two\nlines", "contains control or invisible characters"),
    ("tab\there", "contains control or invisible characters"),
    ("\x1b[31mred", "contains control or invisible characters"),
    ("\U0001F600" * 60, "is 240 bytes in UTF-8"),  # 60 characters, but 4 bytes each.
])
def test_long_or_unprintable_run_names_are_refused(tmp_path, capsys, name, fragment):
    with pytest.raises(folders.RunFolderError, match=fragment):
        folders.check_run_name(name)
    assert sweep.main(["--grid", "loss.kl_weight=1,2", "--set", f"output.dir={tmp_path}",
                       "--set", f"output.run_name={yaml.safe_dump(name).strip()}"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_long_sweep_labels_are_shortened_and_stay_distinct():
    long_a, long_b = {"data.path": "a" * 200 + "1"}, {"data.path": "a" * 200 + "2"}
    labels = [grid.make_label(long_a), grid.make_label(long_b)]
    assert labels[0] != labels[1] and all(len(label) <= folders.MAX_RUN_NAME - 8 for label in labels)
    assert grid.make_label({"loss.kl_weight": 0.1}) == "kl_weight-0.1"  # Short labels are unchanged.


def test_a_refused_output_folder_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(folders, "MIN_FREE_BYTES", 2**62)
    with pytest.raises(folders.RunFolderError, match="MiB free"):
        folders.check_writable(str(tmp_path / "new" / "out"))
    assert os.listdir(tmp_path) == []  # Removed what it created, and only that.


def hold_lock(run_dir):
    """Another process holding run_dir's lock until its stdin closes."""
    code = f"import sys; sys.path.insert(0, {ROOT!r}); from vae_kl.runs import locks; " \
           f"lock = locks.lock_run_dir({str(run_dir)!r}); " \
           "print('locked', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def dead_pid():
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_a_run_folder_held_by_a_live_process_is_refused_and_freed_when_it_dies(tmp_path, capsys):
    args = quick_sets(tmp_path, "output.run_name=taken")
    cfg, _ = config.load(None, args[1::2])
    run_dir = tmp_path / "taken"
    holder = hold_lock(run_dir)
    try:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))  # Unfinished, same settings.
        (run_dir / "summary.json").write_text('{"status": "running"}')
        assert locks.lock_holder(str(run_dir)) == str(holder.pid)
        assert train.main(args) == 2
        err = capsys.readouterr().err
        assert f"is being trained by process {holder.pid}; wait for it or choose another output.run_name" in err
        assert sorted(os.listdir(run_dir)) == [".lock", "config.yaml", "summary.json"]  # Nothing written.
    finally:
        holder.kill()  # SIGKILL: no clean-up; the OS drops the lock.
        holder.wait()
    assert locks.lock_holder(str(run_dir)) is None
    os.makedirs(run_dir / "state")
    stale = run_dir / "state" / f".tmp-{dead_pid()}-checkpoint.weights.h5"
    live = run_dir / f".tmp-{os.getpid()}-summary.json"
    stale.write_text("half a file")
    live.write_text("being written")
    lock = locks.lock_run_dir(str(run_dir))
    assert locks.lock_holder(str(run_dir)) == str(os.getpid())
    assert not stale.exists() and live.exists()
    # The lock holds disk back for a last summary.json on a full disk, and gives it up when released.
    assert os.path.getsize(run_dir / locks.LOCK_FILE) == locks.RESERVE_BYTES
    lock.release_reserve()
    assert os.path.getsize(run_dir / locks.LOCK_FILE) == locks.PID_BYTES
    assert locks.lock_holder(str(run_dir)) == str(os.getpid())
    lock.close()
    assert locks.lock_holder(str(run_dir)) is None


def test_a_library_s_full_disk_message_of_several_lines_is_one_line():
    # What h5py raises when the checkpoint fills the disk (abridged).
    error = OSError("Can't synchronously write data (file write failed: time = Tue Dec  1 18:50:10 2026\n, "
                    "filename = 'x.h5', file descriptor = 6, errno = 28, error message = 'No space left on device')")
    assert exits.os_error_text(error) == "No space left on device"
    assert exits.os_error_text(OSError(errno.EACCES, "Permission denied", "/x")) == "Permission denied (/x)"


def test_the_sweep_neither_clears_nor_duplicates_a_run_another_process_holds(tmp_path, monkeypatch, capsys):
    args = sweep.parse_args(["--grid", "loss.kl_weight=1", "--name", "held", "--set", f"output.dir={tmp_path}"])
    plan = grid.make_plan(args)
    grid.prepare_folder(plan)
    (run,) = plan.runs
    run_dir = os.path.join(plan.folder, run.label)
    lock = locks.lock_run_dir(run_dir)  # Being set up by a live process: no summary.json yet.
    runner.clear_stillborn(run_dir)
    assert os.path.isdir(run_dir)
    monkeypatch.setattr(runner, "OWNER_WAIT_SECONDS", 0.3)
    statuses, _ = runner.run_all(plan, executors.LocalExecutor(plan.workers), sweep.TRAIN_SCRIPT)
    assert statuses == {run.label: "busy"}
    assert f"process {os.getpid()} is still training it" in capsys.readouterr().out
    assert not os.path.exists(grid.log_path(plan, run))  # No train.py was started.
    assert sorted(os.listdir(plan.folder)) == sorted([".lock", "configs", "logs", run.label, "sweep.yaml",
                                                      "wall_seconds.json"])
    lock.close()
    runner.clear_stillborn(run_dir)
    assert not os.path.exists(run_dir)


def sweep_rows(folder):
    with open(folder / "results.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_killing_only_the_sweep_stops_its_child_and_an_immediate_rerun_resumes_the_same_folder(tmp_path):
    grid, sets = ["--grid", "loss.kl_weight=1", "--name", "orphan"], ["train.epochs=5", "data.limit=300"]
    command = [sys.executable, os.path.join(ROOT, "sweep.py"), *grid]
    for item in quick_sets(tmp_path, *sets)[1::2]:
        command += ["--set", item]
    run_dir = tmp_path / "sweep_orphan" / "kl_weight-1"
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = None
    try:
        deadline = time.time() + 300
        while (atomic.read_json(str(run_dir / "state" / "progress.json")) or {}).get("epochs_completed", 0) < 1:
            assert first.poll() is None and time.time() < deadline, "the sweep did not reach its first epoch"
            time.sleep(0.05)
        child = locks.lock_holder(str(run_dir))
        first.send_signal(signal.SIGKILL)  # Only the sweep: its train.py child must stop by itself.
        first.wait()
        rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        if child and signals.pid_alive(int(child)):
            os.kill(int(child), signal.SIGKILL)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    with open(tmp_path / "sweep_orphan" / "logs" / "kl_weight-1.log", encoding="utf-8") as handle:
        log = handle.read()
    assert "Interrupted after" in log and "Resuming the unfinished run" in log  # Stopped like Ctrl-C, resumed.
    assert [row["epoch"] for row in records.read_csv_rows(str(run_dir / "metrics.csv"))] == [1, 2, 3, 4, 5]
    assert "busy" not in rerun.stdout and [row["status"] for row in sweep_rows(tmp_path / "sweep_orphan")] == [
        "complete"]
    assert not [name for name in os.listdir(tmp_path / "sweep_orphan") if name.endswith("-2")]


@pytest.mark.parametrize("kernel", [True, False], ids=["prctl", "polling"])
def test_a_child_stops_like_ctrl_c_when_its_parent_is_killed(tmp_path, kernel):
    """The two ways signals.stop_like_ctrl_c notices a dead parent, without TensorFlow: a parent that
    starts a sleeping child and is then SIGKILLed; the child must get KeyboardInterrupt."""
    mark = tmp_path / "interrupted"
    child = (f"import sys, time; sys.path.insert(0, {ROOT!r}); from vae_kl.process import signals\n"
             f"if not {kernel}: signals._ask_kernel_for_sigterm_on_parent_death = lambda: False\n"
             "signals.stop_like_ctrl_c()\n"  # 'ready' from inside the try: the signal may come right after it.
             f"try:\n    print('ready', flush=True); time.sleep(60)\nexcept KeyboardInterrupt:\n"
             f"    open({str(mark)!r}, 'w').close()\n")
    parent = ("import os, subprocess, sys\n"
              f"env = dict(os.environ, {signals.PARENT_PID_VARIABLE}=str(os.getpid()))\n"
              f"child = subprocess.Popen([sys.executable, '-c', {child!r}], env=env, stdout=subprocess.PIPE,"
              " text=True)\n"
              "child.stdout.readline(); print(child.pid, flush=True); sys.stdin.read()\n")
    parent_process = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
    pid = int(parent_process.stdout.readline())
    parent_process.kill()
    parent_process.wait()
    deadline = time.time() + 30
    while signals.pid_alive(pid) and not mark.exists() and time.time() < deadline:
        time.sleep(0.05)
    if signals.pid_alive(pid) and not mark.exists():
        os.kill(pid, signal.SIGKILL)
    assert mark.exists()


# ---------------------------------------------------------------------------------------------
# evaluate.py on damaged run folders, and faults outside training. One finished run is shared.

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    status, run_dir = train.train(quick_config(out, "output.run_name=done", "output.tensorboard=false"))
    assert status == 0
    return run_dir


def copy_of(run_dir, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def damage_model(run_dir, how):
    import zipfile

    path = os.path.join(run_dir, "model.keras")
    if how == "truncated":
        with open(path, "rb") as handle:
            data = handle.read()
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 3])
    elif how == "empty":
        open(path, "wb").close()
    elif how == "not a zip":
        with open(path, "w") as handle:
            handle.write("hello")
    elif how == "directory":
        os.remove(path)
        os.mkdir(path)
    else:  # Rewrite one member of the archive.
        member, text = how
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        members[member] = text.encode() if isinstance(text, str) else text
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, content)


LAMBDA_CONFIG = ('{"module": "keras.layers", "class_name": "Lambda", "config": {"name": "l", "function": '
                 '{"class_name": "__lambda__", "config": {"code": "YWJj", "defaults": null, "closure": null}}}}')
SYSTEM_CONFIG = '{"module": "os", "class_name": "system", "config": "echo pwned > /tmp/vae_pwned"}'


@pytest.mark.parametrize("how", ["truncated", "empty", "not a zip", "directory", ("config.json", "garbage{"),
                                 ("config.json", LAMBDA_CONFIG), ("config.json", SYSTEM_CONFIG),
                                 ("model.weights.h5", b"not hdf5")],
                         ids=["truncated", "empty", "not-zip", "directory", "garbage-config", "lambda", "os-system",
                              "garbage-weights"])
def test_evaluate_refuses_a_damaged_or_unsafe_model_in_one_line(finished_run, tmp_path, capsys, how):
    run_dir = copy_of(finished_run, tmp_path)
    damage_model(run_dir, how)
    assert evaluate.main(["--run", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not os.path.exists("/tmp/vae_pwned")


@pytest.mark.parametrize("file, text, fragment", [
    ("summary.json", "[1, 2]", "holds no finished run"),
    ("summary.json", '{"status": "complete"}', "does not name its dataset"),
    ("summary.json", '{"status": "complete", "dataset": "imagenet"}', "cannot be used"),
    ("metrics.csv", "epoch,loss\n1,abc\n", "not a number"),
    ("config.yaml", "model: [1, 2", "cannot be used"),
])
def test_evaluate_refuses_damaged_run_files_in_one_line(finished_run, tmp_path, capsys, file, text, fragment):
    run_dir = copy_of(finished_run, tmp_path)
    with open(os.path.join(run_dir, file), "w") as handle:
        handle.write(text)
    assert evaluate.main(["--run", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


@pytest.mark.parametrize("k, fragment", [("-5", "from 1 to"), ("0", "from 1 to"), ("many", "expects an integer"),
                                         (str(10 ** 30), "from 1 to")])
def test_evaluate_checks_iwae_k(finished_run, capsys, k, fragment):
    assert evaluate.main(["--run", str(finished_run), "--iwae-k", k]) == 2
    assert fragment in capsys.readouterr().err


def test_ctrl_c_during_the_final_evaluation_leaves_an_interrupted_run_that_resumes(tmp_path, monkeypatch):
    real = run_figures.evaluate_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_figures, "evaluate_run", interrupted)
    cfg = quick_config(tmp_path, "output.run_name=late", "output.tensorboard=false")
    status, run_dir = train.train(cfg)
    assert status == exits.EXIT_INTERRUPTED and folders.run_status(run_dir) == "interrupted"
    monkeypatch.setattr(run_figures, "evaluate_run", real)
    summary = train.run(cfg)
    assert summary["status"] == "complete" and summary["epochs_completed"] == 1


def test_a_full_disk_during_training_is_one_line_exit_4_and_resumable(tmp_path, monkeypatch, capsys):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(records, "save_checkpoint", full)
    args = quick_sets(tmp_path, "output.run_name=full", "output.tensorboard=false")
    assert train.main(args) == exits.EXIT_ENVIRONMENT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No space left on device"), err
    assert folders.run_status(os.path.join(tmp_path, "full")) == "failed"
    monkeypatch.undo()
    assert train.main(args) == 0 and folders.run_status(os.path.join(tmp_path, "full")) == "complete"
