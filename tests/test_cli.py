"""The command line: --help answers before TensorFlow loads, and a terminal gets a progress bar that moves."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from vae_kl.training import machine


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "sweep.py"])
def test_help_answers_without_importing_tensorflow(tmp_path, script):
    # A `tensorflow` package first on the path that refuses to load: any import before parsing fails.
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("tensorflow imported")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), ROOT])}
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}") and "tensorflow imported" not in result.stderr


def setup_of(monkeypatch, terminal, steps_per_epoch=32, **settings):
    """machine.Setup for steps_per_epoch batches of 8 blank digits, with sys.stdout a terminal or not."""
    from vae_kl.data import sources
    from vae_kl.spec import config

    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    x = np.zeros((steps_per_epoch * 8, 28, 28, 1), "float32")
    digits = sources.Digits(x_train=x, y_train=np.zeros(len(x), "int64"), x_val=x[:8], y_val=np.zeros(8, "int64"),
                         name="test")
    sets = ["train.batch_size=8", "train.batch_shards=1", *[f"{k}={v}" for k, v in settings.items()]]
    return machine.Setup(config.load(None, sets)[0], digits)


def test_a_terminal_caps_steps_per_execution_so_the_bar_moves(monkeypatch):
    piped = setup_of(monkeypatch, terminal=False)
    assert piped.steps_per_execution == 32 and not any("steps per execution" in n for n in piped.notes)
    terminal = setup_of(monkeypatch, terminal=True)
    # 32 steps: at most 32 // 10 = 3 per execution, and the largest divisor of 32 up to 3 is 2: 16 bar updates.
    assert terminal.steps_per_execution == 2
    (note,) = [n for n in terminal.notes if "steps per execution" in n]
    assert "running 2 steps per execution" in note and "progress bar" in note
    # 469 steps (MNIST at batch 128) allow 46 per execution; 32 is configured and 7 divides 469: unchanged.
    assert [setup_of(monkeypatch, terminal, 469).steps_per_execution for terminal in (True, False)] == [7, 7]
    # A configured number already below the cap stays; an epoch of fewer than 10 steps runs one at a time.
    assert setup_of(monkeypatch, True, 500, **{"train.steps_per_execution": 4}).steps_per_execution == 4
    assert setup_of(monkeypatch, True, 6).steps_per_execution == 1
