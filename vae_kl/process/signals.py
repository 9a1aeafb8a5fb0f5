"""Signals and processes: Ctrl-C and SIGTERM stop a training resumably, and a sweep's train.py stops
when the sweep dies; the CPU cores this process may use.
"""

import os
import signal
import sys
import threading

PARENT_PID_VARIABLE = "VAE_TRAIN_PARENT_PID"  # Set by sweep.py: train.py stops when that process dies.


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pid_alive(pid: int) -> bool:
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


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C or SIGTERM arrived. Training calls this between steps because a
    KeyboardInterrupt raised while TensorFlow runs C++ code can be lost there; the flag is not."""
    if _interrupt_requested.is_set():
        raise KeyboardInterrupt


def stop_like_ctrl_c() -> None:
    """Make Ctrl-C and SIGTERM stop training (status interrupted, resumable, exit 130), and stop this
    process when the parent named in $VAE_TRAIN_PARENT_PID (a sweep) dies, even by SIGKILL. Call it inside
    exits.guard: when that parent is gone already, it raises KeyboardInterrupt at once."""
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
        raise KeyboardInterrupt  # Stopped like Ctrl-C, before anything started (exits.guard: status 130).


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
