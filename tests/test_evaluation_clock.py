"""A long evaluation says how long it will take and how far it is: the estimate from one timed decoder call, the
refusal above --max-minutes, the progress lines, evaluate.py --digits, and Ctrl-C leaving the run as it was."""

import io
import json
import os
import sys
import types

import pytest

import evaluate
import train
from conftest import quick_config
from vae_kl.evaluation import bounds, clock
from vae_kl.process.notebook import in_notebook


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    status, run_dir = train.train(quick_config(tmp_path_factory.mktemp("clock"), "output.run_name=done"))
    assert status == 0
    return run_dir


def summary_of(run_dir):
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_the_clock_says_the_estimate_refuses_a_long_one_and_reports_each_tenth():
    out = io.StringIO()
    timer = clock.Clock(digits=10, k=10_000, out=out)
    timer.calibrate(seconds_per_code=0.001, measured_on="timed on 1,000 codes")  # 100,010 codes: about 100 s.
    assert out.getvalue() == ("Evaluating 10 digits with k = 10,000 importance samples: about 2 min (timed on 1,000 "
                              "codes).\n")
    for _ in range(10):
        timer.advance(10_001)  # A digit's 10,000 samples and its share of the 10 codes after them.
    lines = out.getvalue().splitlines()[1:]
    assert [line.split(" digits")[0].strip() for line in lines] == [f"{10 * d} % ({d} of 10" for d in range(1, 10)]
    assert all("left" in line for line in lines)
    short = io.StringIO()
    brief = clock.Clock(digits=10, k=1000, out=short)
    brief.calibrate(seconds_per_code=0.001, measured_on="timed")  # About 10 s: the estimate, no progress lines.
    for _ in range(10):
        brief.advance(1001)
    assert len(short.getvalue().splitlines()) == 1
    with pytest.raises(clock.EvaluationTooLong, match=r"about 13.9 h .*more than the 60 min allowed; raise it"):
        clock.Clock(1000, 100_000, limit_minutes=60, hint="raise it").calibrate(0.0005, "timed")
    quiet = io.StringIO()
    clock.Clock(2, 10, out=quiet).calibrate(0.001, "timed")  # 22 ms: nothing to say.
    assert quiet.getvalue() == ""
    assert [clock.duration_text(s) for s in (0.2, 45, 600, 12600)] == ["1 s", "45 s", "10 min", "3.5 h"]


def test_the_estimate_is_timed_on_a_call_of_the_bounds_own_size(finished_run):
    from conftest import build_vae

    vae = build_vae()
    import numpy as np

    x = np.random.default_rng(0).uniform(size=(12, 28, 28, 1)).astype("float32")
    z_mean, z_log_var = (np.zeros((12, 2), "float32") for _ in range(2))
    for k, codes in ((5000, 1024), (100, 1000), (2, 24)):  # A digit's 1,024 samples; 10 digits of 100; all 12 of 2.
        seconds, measured = bounds.seconds_per_code(vae, x, z_mean, z_log_var, k, None)
        assert measured == codes and 0 < seconds < 1


def test_evaluate_digits_takes_the_first_digits_and_says_so(finished_run, capsys, monkeypatch):
    monkeypatch.setattr(clock, "SHOW_AFTER_SECONDS", 0.0)  # Show the estimate of this short evaluation too.
    assert evaluate.main(["--run", finished_run, "--digits", "5", "--iwae-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.index("Evaluating 5 digits with k = 3 importance samples: about") < out.index("Result on 5 of 1000")
    validation = summary_of(finished_run)["validation"]
    assert validation["examples"] == 5 and validation["available_examples"] == 1000 and validation["iwae_k"] == 3
    with open(os.path.join(finished_run, "report.html"), encoding="utf-8") as handle:
        assert "5 of 1000" in handle.read()


def test_an_evaluation_longer_than_allowed_is_refused_before_it_runs(finished_run, capsys):
    before = summary_of(finished_run)
    assert evaluate.main(["--run", finished_run, "--iwae-k", "100000", "--max-minutes", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: evaluating 200 digits with k = 100,000 importance samples")
    assert "--max-minutes" in err[0] and "--digits" in err[0]
    assert summary_of(finished_run) == before
    for bad in (["--digits", "0"], ["--max-minutes", "x"], ["--iwae-k", "100001"]):
        assert evaluate.main(["--run", finished_run, *bad]) == 2


def test_ctrl_c_during_the_evaluation_exits_130_with_the_run_unchanged(finished_run, monkeypatch):
    before = summary_of(finished_run)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bounds, "importance_bounds", interrupted)
    assert evaluate.main(["--run", finished_run]) == 130
    assert summary_of(finished_run) == before


def test_a_process_that_imported_ipykernel_is_no_notebook_and_gets_lines_not_a_bar(monkeypatch):
    """nbclient (tests/test_notebook.py) imports ipykernel into the test process: that alone once switched the
    clock to Keras's bar, writing nothing to its own stream. A notebook is a running kernel: its shell has one."""
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not in_notebook()
    out = io.StringIO()
    timer = clock.Clock(digits=10, k=10_000, out=out)
    timer.calibrate(seconds_per_code=0.001, measured_on="timed on 1,000 codes")
    timer.advance(10_001)
    assert timer.bar is None and "10 % (1 of 10 digits)" in out.getvalue()
    kernel_shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel_shell))
    assert in_notebook()
