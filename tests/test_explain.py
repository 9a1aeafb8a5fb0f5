"""`train.py --explain`, and every check of the input, answer without TensorFlow.

Each command runs with a `tensorflow` package first on the path that refuses to import: a command that
loaded TensorFlow before answering would fail with "tensorflow imported". That proves "before the slow
import" without timing anything (speed belongs in benchmarks/).
"""

import os
import re
import subprocess
import sys

import pytest

import train
from conftest import ROOT
from vae_kl.spec import config

MNIST_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@pytest.fixture
def no_tensorflow(tmp_path):
    """run(script, *args): the script in a fresh process where importing tensorflow raises."""
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("tensorflow imported")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), ROOT])}

    def run(script, *args):
        return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    return run


def effective_beta(stdout):
    return float(re.search(r"Effective β = ([0-9.e+-]+)", stdout).group(1))


def test_explain_prints_the_objective_and_expectation_without_tensorflow(no_tensorflow):
    result = no_tensorflow("train.py", "--config", "config.yaml", "--explain")
    assert result.returncode == 0, result.stderr
    assert effective_beta(result.stdout) == 1.0 and "the negative ELBO" in result.stdout
    assert "Nothing is trained" in result.stdout
    assert "To train it: python train.py --config config.yaml" in result.stdout
    mean = no_tensorflow("train.py", "--config", "config.yaml", "--set", "loss.reconstruction_reduction=mean",
                         "--explain")
    assert mean.returncode == 0, mean.stderr
    # By hand: (1/784)·Σ BCE + KL = (1/784)·[Σ BCE + 784·KL].
    assert effective_beta(mean.stdout) == 784.0
    assert "WARNING: the reconstruction is averaged over 784 pixels" in mean.stdout
    assert "Expect: posterior collapse" in mean.stdout
    assert "--set loss.reconstruction_reduction=mean" in mean.stdout.splitlines()[-1]


def test_explain_reads_the_data_shape_from_an_npz_header(no_tensorflow, tmp_path):
    import numpy as np

    path = tmp_path / "rgb.npz"
    np.savez(path, x_train=np.zeros((300, 32, 32, 3), "uint8"), y_train=np.zeros(300, "int64"),
             x_test=np.zeros((20, 32, 32, 3), "uint8"), y_test=np.zeros(20, "int64"))
    result = no_tensorflow("train.py", "--set", "data.source=npz", "--set", f"data.path={path}",
                           "--set", "loss.reconstruction_reduction=mean", "--set", "train.batch_size=100", "--explain")
    assert result.returncode == 0, result.stderr
    assert "32×32×3 = 3072 values" in result.stdout and "300 training images: 3 steps per epoch" in result.stdout
    assert effective_beta(result.stdout) == 3072.0


def test_ignored_schedule_settings_are_named_and_a_sweep_section_is_accepted(no_tensorflow, tmp_path):
    path = tmp_path / "with_sweep.yaml"
    path.write_text("loss:\n  kl_warmup: 10\nsweep:\n  grid:\n    loss.kl_weight: [1, 10]\n")
    result = no_tensorflow("train.py", "--config", str(path), "--explain")
    assert result.returncode == 0, result.stderr
    assert "does not read loss.kl_warmup 10" in result.stdout
    assert "sweep: section is read by sweep.py" in result.stdout


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "a_pipe"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("case", ["run_name", "missing_npz", "fifo_npz", "fifo_config", "folder_with_fifo",
                                  "unwritable_dir", "bad_value"])
def test_bad_input_to_train_is_refused_before_tensorflow(no_tensorflow, tmp_path, fifo, case):
    images = tmp_path / "images"
    images.mkdir()
    os.mkfifo(images / "pipe.png")
    blocked = tmp_path / "file"
    blocked.write_text("")
    args = {"run_name": ["--set", "output.run_name=../escape"],
            "missing_npz": ["--set", "data.source=npz", "--set", f"data.path={tmp_path / 'none.npz'}"],
            "fifo_npz": ["--set", "data.source=npz", "--set", f"data.path={fifo}"],
            "fifo_config": ["--config", fifo],
            "folder_with_fifo": ["--set", "data.source=folder", "--set", f"data.path={images}"],
            "unwritable_dir": ["--set", f"output.dir={blocked}/outputs"],
            "bad_value": ["--set", "loss.kl_weight=-1"]}[case]
    for extra in ([], ["--explain"]):
        result = no_tensorflow("train.py", *args, *extra)
        assert result.returncode == 2, (case, extra, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "tensorflow imported" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, words", [(["--run", "no/such/run"], "holds no finished run"),
                                         (["--run", ".", "--iwae-k", "0"], "--iwae-k expects an integer from 1 to"),
                                         (["--run", ".", "--iwae-k", "many"], "--iwae-k expects an integer")])
def test_bad_input_to_evaluate_is_refused_before_tensorflow(no_tensorflow, args, words):
    result = no_tensorflow("evaluate.py", *args)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "tensorflow imported" not in result.stderr


@pytest.mark.parametrize("value, words", [
    (0, "train.run takes a YAML path"), (["config.yaml"], "train.run takes a YAML path"),
    (config.Config(train=None), "Config.train must be a config.TrainConfig"),
])
def test_train_run_refuses_what_is_not_a_config(value, words):
    with pytest.raises(config.ConfigError, match=re.escape(words)):
        train.run(value)


@pytest.mark.parametrize("kwargs, words", [({"overrides": 5}, "overrides must be a list"),
                                           ({"overrides": [5]}, "overrides must be a list"),
                                           ({"callbacks": 5}, "callbacks must be a list"),
                                           ({"callbacks": [object()]}, "keras.callbacks.Callback objects")])
def test_train_run_refuses_bad_overrides_and_callbacks(kwargs, words):
    with pytest.raises(config.ConfigError, match=re.escape(words)):
        train.run(None, **kwargs)


@pytest.mark.parametrize("reductions", [("mean", "sum"), ("sum", "mean"), ("mean", "mean")])
def test_the_advised_elbo_weight_applied_is_the_elbo_and_needs_no_warning(reductions, capsys):
    sets = ["--set", f"loss.reconstruction_reduction={reductions[0]}", "--set", f"loss.kl_reduction={reductions[1]}"]
    assert train.main([*sets, "--set", "loss.kl_weight=0.5", "--explain"]) == 0
    before = capsys.readouterr().out
    assert effective_beta(before) != 1
    (advice,) = [line for line in before.splitlines() if "β = 1, the ELBO, is loss.kl_weight:" in line]  # Once.
    weight = re.search(r"β = 1, the ELBO, is loss.kl_weight: ([0-9.e+-]+)", advice).group(1)
    assert train.main([*sets, "--set", f"loss.kl_weight={weight}", "--explain"]) == 0
    after = capsys.readouterr().out
    assert "i.e. the negative ELBO (β = 1). Effective β = 1," in after
    assert "WARNING" not in after and "the ELBO, is loss.kl_weight" not in after
    assert "Expect: the ELBO's own balance" in after


def test_every_beta_other_than_one_says_which_weight_is_the_elbos(capsys):
    assert train.main(["--config", os.path.join(ROOT, "recipes", "keras_io_2020.yaml"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert effective_beta(out) == 0.5
    assert "β = 1, the ELBO, is loss.kl_weight: 2 with these reductions" in out


def test_a_keras_dataset_that_cannot_be_downloaded_is_refused_before_tensorflow(tmp_path):
    from vae_kl.data import downloads

    home = tmp_path / "keras-home"
    (home / "datasets").mkdir(parents=True)
    (home / "datasets" / downloads.DOWNLOAD_FAILED_MEMO).write_text("a failure a minute ago\n")  # Offline.
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("tensorflow imported")\n')
    env = {**os.environ, "KERAS_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), ROOT])}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--set", "data.source=mnist", "--set",
                             f"output.dir={tmp_path / 'out'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: Could not load mnist from keras.datasets (a download from this machine")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
