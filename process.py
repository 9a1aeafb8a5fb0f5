"""This program as a process: its exit statuses, the one error path of every entry point, signals.

Every entry point (train.py, evaluate.py, sweep.py) runs its work through `guard`, which turns a
`UserError` (a bad config, bad data, an unusable run folder; each module raises its own subclass)
into one `error:` line and exit status 2, a missing requirement or a machine fault (OSError) into
exit status 4, and Ctrl-C into 130. `train.run` raises the same UserError subclasses to Python.
"""

import errno
import os
import signal
import sys
import threading

# The exit statuses, one set for every entry point (docs/reliability.md lists them). 1 is sweep.py's "a run failed".
EXIT_SWEEP_RUN_FAILED, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
PARENT_PID_VARIABLE = "VAE_TRAIN_PARENT_PID"  # Set by sweep.py: train.py stops when that process dies.


class UserError(ValueError):
    """A problem with what the user gave (a setting, a file, a folder), said in one line with its fix."""


def available_cores():
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pid_alive(pid):
    if pid <= 0:  # os.kill(0, ...) would signal our own process group.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # Someone else's process, or a number no process can have (kept, to be safe).
    return True


_interrupt_requested = threading.Event()


def raise_if_interrupted():
    """Raise KeyboardInterrupt if Ctrl-C or SIGTERM arrived. Training calls this between steps because a
    KeyboardInterrupt raised while TensorFlow runs C++ code can be lost there; the flag is not."""
    if _interrupt_requested.is_set():
        raise KeyboardInterrupt


def stop_like_ctrl_c():
    """Make Ctrl-C and SIGTERM stop training (status interrupted, resumable, exit 130), and stop this
    process when the parent named in $VAE_TRAIN_PARENT_PID (a sweep) dies, even by SIGKILL."""
    def interrupt(signum, frame):
        # Once: a second signal must not interrupt the handler that is saving the interrupted state.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _interrupt_requested.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Not where a shell made us ignore it.
        signal.signal(signal.SIGINT, interrupt)
    parent = os.environ.get(PARENT_PID_VARIABLE, "")
    if not parent.isdigit():
        return
    if not _ask_kernel_for_sigterm_on_parent_death():
        threading.Thread(target=_watch_parent, args=(int(parent),), daemon=True).start()
    if os.getppid() != int(parent):  # The parent died before we asked to be told: nothing started yet.
        raise SystemExit(130)  # The exit status of an interrupted run.


def _ask_kernel_for_sigterm_on_parent_death():
    """Linux's prctl(PR_SET_PDEATHSIG, SIGTERM); False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        return ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent):
    """Elsewhere than Linux: poll for the parent's death, then send ourselves the SIGTERM the kernel would
    (a real signal, unlike _thread.interrupt_main, also wakes a main thread blocked in a system call)."""
    import time

    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)


def first_line(error, limit=200):
    """The first line of an exception's message, at most `limit` characters, for one-line errors."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def guard(action):
    """Run an entry point's action(); a user error becomes one `error:` line and exit status 2,
    Ctrl-C exit status 130. Returns the exit status (action's own, or 0)."""
    try:
        return action() or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as error:  # A requirement missing from this Python: the environment, not the input.
        print(f"error: {first_line(error)}; install the requirements with pip install -r requirements.txt.",
              file=sys.stderr)
        return EXIT_ENVIRONMENT
    except OSError as error:  # The machine, not the input: a full disk, a folder gone, a permission changed.
        print(f"error: {os_error_text(error)}. Nothing finished is lost: fix that and run the same command again "
              f"to resume from the last checkpoint.", file=sys.stderr)
        return EXIT_ENVIRONMENT


def exit_now(status):
    """Flush and end the process with `status`, skipping the interpreter's teardown: after a failed write,
    h5py's objects print tracebacks and can crash (SIGSEGV) while they are destroyed, which would turn one
    `error:` line and exit status 4 into a screen of text and 139. Everything a run keeps is written already."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def os_error_text(error):
    """An OSError in a few words on one line: 'No space left on device (path)' also when a library (h5py)
    wraps errno 28 in a message of several lines."""
    text = str(error.strerror or error)
    if error.errno == errno.ENOSPC or "errno = 28" in text:
        text = os.strerror(errno.ENOSPC)
    where = f" ({error.filename})" if error.filename else ""
    return first_line(text) + where

