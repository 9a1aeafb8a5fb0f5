"""The run lock: one process at a time trains in a run folder (or sweeps in a sweep folder).
"""

import os
from typing import Optional

from vae_kl.process.atomic import remove_stale_temp_files
from vae_kl.runs.folders import FINAL_STATUSES, RunFolderError, run_status

try:
    import fcntl
except ImportError:  # Not on Windows: runs there go unlocked.
    fcntl = None


LOCK_FILE = ".lock"  # Holds the pid of the process training in the folder, flock'ed while it lives.
PID_BYTES = 32  # The lock file's first bytes: the holder's pid as text, then NUL padding.
RESERVE_BYTES = 256 * 1024  # Disk the run lock holds back for the last summary.json of a run the disk failed.


class RunLock:
    """An exclusive flock on <run_dir>/.lock. Closing it (or the process dying) releases it.

    The lock file also holds RESERVE_BYTES of disk, allocated when the lock is taken: when the disk fills
    up during training, release_reserve() frees them so that summary.json can still say `failed`."""

    def __init__(self, fd):
        self.fd = fd

    def reserve(self):
        if self.fd is not None:
            try:
                os.posix_fallocate(self.fd, 0, RESERVE_BYTES)
            except (OSError, AttributeError):
                pass  # A file system without fallocate, or already full: the run goes on without the reserve.

    def release_reserve(self):
        if self.fd is not None:
            os.ftruncate(self.fd, PID_BYTES)

    def close(self):
        if self.fd is not None:
            try:
                self.release_reserve()  # A finished run keeps no reserve; a resumed one takes it again.
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    __del__ = close


def lock_folder(folder: str, busy: str) -> RunLock:
    """Take an exclusive flock on <folder>/.lock (creating the folder), or raise RunFolderError with
    busy.format(folder=..., owner=<pid>). The lock names its holder's pid; closing it, or the process
    dying, releases it."""
    os.makedirs(folder, exist_ok=True)
    if fcntl is None:
        return RunLock(None)
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = _pid_text(os.read(fd, PID_BYTES))
        os.close(fd)
        raise RunFolderError(busy.format(folder=folder, owner=owner))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode().ljust(PID_BYTES, b"\0"), 0)
    return RunLock(fd)


def _pid_text(data):
    return data.decode("ascii", "replace").replace("\0", "").strip() or "unknown"


def lock_run_dir(run_dir: str) -> RunLock:
    """Take the run folder for this process (creating it), or raise RunFolderError naming the owner.

    Keep the returned handle for as long as the folder is used. Removes the temporary files a killed
    writer left behind, since only the lock's holder writes into the folder.
    """
    lock = lock_folder(run_dir, "{folder} is being trained by process {owner}; wait for it or choose another "
                                "output.run_name.")
    if run_status(run_dir) in FINAL_STATUSES:  # Another process finished it while we chose it.
        lock.close()
        raise RunFolderError(f"{run_dir} was finished by another process meanwhile; run the command again.")
    remove_stale_temp_files(run_dir)
    lock.reserve()
    return lock


def lock_holder(run_dir: str) -> Optional[str]:
    """The pid (text) of the live process holding the run folder's lock, or None when nobody does."""
    path = os.path.join(run_dir, LOCK_FILE)
    if fcntl is None or not os.path.exists(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # Only tests the lock: released at once below.
    except OSError:
        return _pid_text(os.read(fd, PID_BYTES))
    finally:
        os.close(fd)
    return None
