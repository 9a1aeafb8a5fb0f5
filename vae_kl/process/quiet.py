"""Import TensorFlow without its start-up chatter on the console, keeping real errors.

TensorFlow 2.21 prints C++ log lines while it loads, to file descriptor 2, before it reads
TF_CPP_MIN_LOG_LEVEL: absl logging is not initialised yet ("WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR"), so even level 3 shows the oneDNN notice and
"Could not find cuda drivers" (twice: two shared libraries log them). The first device probe adds
"failed call to cuInit" on a machine without a GPU. Python's sys.stderr cannot catch these, so this
module points fd 2 itself at a temporary file for the import and the probe, then sorts what was
written: known chatter (CHATTER_PATTERNS) is dropped, or appended to a log file; every other line
is written back to stderr.

Entry points should parse their arguments first and only then call import_tensorflow(), so that
`--help` and usage errors answer without the ~5 s import (tests/test_cli.py checks the three entry points).
"""

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, Optional

# Start-up lines that say nothing is wrong. Matched anywhere in a line (glog prefix "I0000 00:00:... file.cc:N]"
# or not). Kept narrow: a line that matches none of these is shown.
CHATTER_PATTERNS = tuple(re.compile(p) for p in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",  # Informational; TF_ENABLE_ONEDNN_OPTS is left alone (it changes the math).
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags",
    r"cudart_stub\.cc|Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",  # GPU builds: two libraries register the same plugin.
    r"computation placer already registered",
    r"TF-TRT Warning|Could not find TensorRT",
    r"Cannot dlopen some GPU libraries|Skipping registering GPU devices",
    r"Could not load dynamic library '?lib(cudart|cuda|cublas|cublasLt|cufft|curand|cusolver|cusparse|cudnn|nvinfer)",
    r"successful NUMA node read from SysFS had negative value|Your kernel may have been built without NUMA support",
))

_captured = []  # Chatter dropped so far in this process, for save_chatter().


def is_chatter(line: str) -> bool:
    """True when `line` is known start-up chatter (see CHATTER_PATTERNS); blank lines count as chatter."""
    return not line.strip() or any(p.search(line) for p in CHATTER_PATTERNS)


def _append(path, lines):
    if path and lines:
        with open(path, "a", encoding="utf-8") as handle:
            handle.writelines(line if line.endswith("\n") else line + "\n" for line in lines)


@contextlib.contextmanager
def quiet_stderr(log_path: Optional[str] = None) -> Iterator[None]:
    """Redirect fd 2 (C++ and Python writes alike) to a temporary file inside the block. On exit, even
    by an exception: restore fd 2, write the non-chatter lines to stderr, append the chatter to log_path
    when given, and keep it for save_chatter()."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            chatter = [line for line in lines if is_chatter(line)]
            _captured.extend(chatter)
            _append(log_path, chatter)
            kept = "".join(line for line in lines if not is_chatter(line))
            if kept:
                sys.stderr.write(kept if kept.endswith("\n") else kept + "\n")
                sys.stderr.flush()


def import_tensorflow(log_path: Optional[str] = None, probe_devices: bool = True) -> tuple[Any, Any]:
    """Import tensorflow and keras quietly; returns (tf, keras).

    Sets TF_CPP_MIN_LOG_LEVEL to 2 unless it is set (TensorFlow's C++ warnings and infos stay off
    later in the run, its errors stay on), then imports inside quiet_stderr(log_path). With
    probe_devices, also lists the physical devices there, where "failed call to cuInit" is printed;
    listing does not start TensorFlow's runtime, so thread settings can still be changed afterwards.
    A second call is cheap: the modules are cached.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_stderr(log_path):
        import keras
        import tensorflow as tf

        if probe_devices:
            tf.config.list_physical_devices()
    return tf, keras


def save_chatter(path: str) -> int:
    """Append the chatter dropped so far to `path` (e.g. <run_dir>/tensorflow_startup.log, once the run
    folder exists, which is after TensorFlow was imported). Returns the number of lines written."""
    _append(path, _captured)
    return len(_captured)
