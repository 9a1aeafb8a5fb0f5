"""quiet: TensorFlow's start-up chatter leaves the console, real errors do not."""

import os
import subprocess
import sys
import textwrap

from conftest import ROOT
from vae_kl.process import quiet

# Seen on this project's machine (TF 2.21, no GPU), at TF_CPP_MIN_LOG_LEVEL 2 and 3 alike.
SEEN = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796113975.030471    4086 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796113975.031830    4086 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "I0000 00:00:1796113975.390959    4086 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796114007.936956    4302 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
]
REAL_ERROR = "E0000 00:00:1796114007.936956    4302 env.cc:12] Could not write to /data/run: No space left on device"


def python(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT, **env})


def test_the_patterns_know_the_chatter_and_nothing_else():
    assert all(quiet.is_chatter(line) for line in SEEN)
    for line in [REAL_ERROR, "Traceback (most recent call last):", "ValueError: bad shape",
                 "E0000 00:00:1.0 1 gpu_device.cc:1] CUDA out of memory"]:
        assert not quiet.is_chatter(line), line


def test_quiet_import_prints_nothing_where_a_plain_import_chatters(tmp_path):
    log = tmp_path / "startup.log"
    raw = python("import tensorflow")
    quiet_run = python(f"from vae_kl.process import quiet; quiet.import_tensorflow({str(log)!r}); print('ready')")
    assert quiet_run.returncode == 0 and quiet_run.stdout == "ready\n"
    assert quiet_run.stderr == ""
    # This machine's TensorFlow does chatter at the same TF_CPP_MIN_LOG_LEVEL, and all of it is known:
    # a new kind of line in a future TensorFlow would show up here first.
    raw_lines = raw.stderr.splitlines()
    assert raw.returncode == 0 and raw_lines
    assert [line for line in raw_lines if not quiet.is_chatter(line)] == []
    logged = log.read_text()
    for line in raw_lines:  # The log keeps what the console no longer shows (timestamps differ).
        assert line.split("] ")[-1] in logged


def test_a_real_error_written_to_fd_2_is_not_swallowed(tmp_path):
    log = tmp_path / "startup.log"
    result = python(f"""
        import os, sys
        from vae_kl.process import quiet
        try:
            with quiet.quiet_stderr({str(log)!r}):
                os.write(2, {SEEN[1]!r}.encode() + b"\\n")  # C++-style write to the descriptor.
                os.write(2, {REAL_ERROR!r}.encode() + b"\\n")
                print("python warning", file=sys.stderr)
                raise RuntimeError("import failed")
        except RuntimeError:
            pass
        os.write(2, b"after\\n")  # fd 2 is the console again, even after an exception.
        print(quiet.save_chatter({str(tmp_path / "later.log")!r}))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [REAL_ERROR, "python warning", "after"]
    assert log.read_text() == SEEN[1] + "\n"
    assert result.stdout == "1\n" and (tmp_path / "later.log").read_text() == SEEN[1] + "\n"
