"""Run folders: naming, safety checks, the run lock, resumable checkpoints, summary.json and metrics.csv.

A run folder `<output.dir>/<run_name>/` is never overwritten. Re-running a
command whose run is unfinished (killed, interrupted) resumes it; re-running one
whose run finished starts a fresh folder `<run_name>-2` (then -3, ...).
"""

import csv
import hashlib
import json
import os
import shutil
import tempfile

import yaml

import config
import process
from atomic import atomic_save, atomic_write_json, read_json, remove_stale_temp_files
from config import quote
from process import first_line

try:
    import fcntl
except ImportError:  # Not on Windows: runs there go unlocked.
    fcntl = None

STATE_DIR = "state"  # Per-epoch checkpoint; removed when the run completes.
FINAL_STATUSES = ("complete", "diverged")
MIN_FREE_BYTES = 50 * 1024 * 1024
MAX_RUN_NAME = 100  # Characters.
MAX_RUN_NAME_BYTES = 200  # In UTF-8: with a '-N' suffix and temporary-file prefixes it fits a 255-byte file name.
LOCK_FILE = ".lock"  # Holds the pid of the process training in the folder, flock'ed while it lives.
PID_BYTES = 32  # The lock file's first bytes: the holder's pid as text, then NUL padding.
RESERVE_BYTES = 256 * 1024  # Disk the run lock holds back for the last summary.json of a run the disk failed.
UNLEARNED_TRAIN_KEYS = ("distribute",)  # Left out of config_fingerprint.


class RunFolderError(process.UserError):
    """The run folder cannot be used; the message says why and what to do."""


def read_csv_rows(path, max_rows=100_000, max_bytes=64 * 2 ** 20):
    """Rows of a CSV written by write_csv, with numbers as floats (epoch as int).

    metrics.csv holds one row per epoch, so at most 100,000 (train.epochs' largest value) of a few hundred
    bytes. A file of more than max_bytes (64 MiB) or more than max_rows rows is refused with one
    RunFolderError: the size before anything is read, the rows while they are streamed (reading stops at
    row max_rows + 1), so a damaged or foreign file is answered in about a second, not after minutes.
    """
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise RunFolderError(f"{path} is {size / 2 ** 20:.0f} MiB, more than the {max_bytes / 2 ** 20:g} MiB a "
                                 f"CSV written by train.py can reach; restore it or delete it (it only feeds the "
                                 f"rate-distortion figure).")
        rows = []
        with open(path, encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if len(rows) == max_rows:
                    raise RunFolderError(f"{path} has more than {max_rows:,} rows, but train.py writes one per "
                                         f"epoch (train.epochs is at most 100,000); restore it or delete it (it "
                                         f"only feeds the rate-distortion figure).")
                rows.append(row)
    except OSError:
        return []
    except (UnicodeDecodeError, csv.Error) as error:
        raise RunFolderError(f"{path} is not a CSV written by train.py ({first_line(error)}); restore it or delete it.")
    try:
        # An empty cell is a column an earlier version's rows lack (write_csv's restval).
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""} for row in rows]
    except (TypeError, ValueError) as error:
        raise RunFolderError(f"{path} holds a value that is not a number ({first_line(error)}); restore the file "
                             f"or delete it (it only feeds the rate-distortion figure).")


def config_fingerprint(cfg_dict):
    """A short hash of the settings that change what is learned (not where outputs go).

    train.distribute is left out: replicas compute the single-device objective and gradient
    (shards.GlobalBatch), so a run started on several devices may resume on one, and the names of
    run folders made before the key existed stay the same."""
    relevant = {k: v for k, v in cfg_dict.items() if k != "output"}
    if isinstance(relevant.get("train"), dict):
        relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in UNLEARNED_TRAIN_KEYS}
    text = json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def default_run_name(cfg_dict):
    loss = cfg_dict["loss"]
    weight = loss["kl_weight"] if loss["kl_weight"] is not None else f"n{loss['kl_weight_norm']}"
    return (f"{loss['likelihood']}_rec-{loss['reconstruction_reduction']}_kl-{loss['kl_reduction']}"
            f"_w{weight}_{config_fingerprint(cfg_dict)}")


def check_run_name(name, what="output.run_name"):
    """Refuse names that would leave the output folder or are awkward on any file system."""
    if name in ("", ".", "..") or os.path.isabs(name) or "/" in name or "\\" in name or "\0" in name:
        raise RunFolderError(f"{what} {quote(name)} must be a plain folder name (no '/', '..' or absolute "
                             f"path) so the run stays inside output.dir.")
    if len(name) > MAX_RUN_NAME:
        raise RunFolderError(f"{what} {quote(name)} is {len(name)} characters long; use at most {MAX_RUN_NAME}.")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_RUN_NAME_BYTES:  # Many 4-byte characters.
        raise RunFolderError(f"{what} {quote(name)} is {len(name.encode('utf-8', 'surrogatepass'))} bytes in UTF-8; "
                             f"file names hold at most 255, so use at most {MAX_RUN_NAME_BYTES} bytes.")
    if not name.isprintable():  # Newlines, tabs, escapes: they garble every listing and log line.
        raise RunFolderError(f"{what} {quote(name)} contains control or invisible characters; use letters, "
                             f"digits, spaces and punctuation only.")
    return name


def check_could_write(folder):
    """Refuse an output folder that could not be created or written, without creating anything: its
    nearest existing ancestor must be a writable folder with room for a run (the check before TensorFlow;
    check_writable proves it by writing once the data has loaded)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        why = "Not a directory" if not os.path.isdir(path) else "Permission denied"
        raise RunFolderError(f"Cannot write to output.dir '{folder}' ({why}: {path}); choose a writable folder.")
    check_free_space(folder, path)


def check_free_space(folder, path):
    """Refuse output.dir `folder` when the file system holding `path` has less than MIN_FREE_BYTES free."""
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise RunFolderError(f"output.dir '{folder}' has only {free // 2**20} MiB free; a run needs at least "
                             f"{MIN_FREE_BYTES // 2**20} MiB. Free space or choose another folder.")


def check_writable(folder):
    """Create the output folder if needed and prove we can write there, before any training.
    A refusal removes the folders this call created, so it leaves nothing behind."""
    created = _missing_folders(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(handle)
        os.remove(probe)
        check_free_space(folder, folder)
    except (OSError, RunFolderError) as error:
        for path in created:  # Deepest first; rmdir leaves a folder alone once anything is in it.
            try:
                os.rmdir(path)
            except OSError:
                break
        if isinstance(error, RunFolderError):
            raise
        raise RunFolderError(f"Cannot write to output.dir '{folder}' ({error.strerror}); choose a writable folder.")


def _missing_folders(folder):
    """The folders makedirs(folder) would create, deepest first."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def run_status(run_dir):
    summary = read_json(os.path.join(run_dir, "summary.json")) or {}
    return summary.get("status")


def _same_settings(run_dir, cfg_dict):
    try:
        with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as handle:
            stored = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return False
    # Filled with defaults: a run started by a version with fewer settings resumes with this one.
    return isinstance(stored, dict) and config_fingerprint(config.with_defaults(stored)) == config_fingerprint(cfg_dict)


def choose_run_dir(cfg_dict):
    """Decide where this run goes. Returns (run_dir, resume, message) and creates nothing.

    Unfinished run with the same settings: resume it. Finished run: the next free
    `<name>-N`. Unfinished run with different settings: refuse, since resuming it
    would mix two experiments and starting over would destroy it.
    """
    out = cfg_dict["output"]
    base = check_run_name(out["run_name"] or default_run_name(cfg_dict))
    check_writable(out["dir"])
    candidate, n = base, 1
    while True:
        run_dir = os.path.join(out["dir"], candidate)
        if not os.path.exists(run_dir):
            note = "" if n == 1 else f" ('{base}' already holds a finished run)"
            return run_dir, False, f"Run folder: {run_dir}{note}"
        status = run_status(run_dir)
        if status not in FINAL_STATUSES:
            if not os.path.isdir(os.path.join(run_dir, STATE_DIR)) and status is None:
                pass  # A folder with neither summary nor checkpoint: not ours to touch; try the next name.
            elif _same_settings(run_dir, cfg_dict):
                return run_dir, True, f"Resuming the unfinished run in {run_dir}"
            else:
                raise RunFolderError(f"{run_dir} holds an unfinished run with different settings; re-run it with "
                                     f"its own config.yaml, or choose another output.run_name.")
        n += 1
        candidate = f"{base}-{n}"


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


def lock_folder(folder, busy):
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


def lock_run_dir(run_dir):
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


def lock_holder(run_dir):
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


def checkpoint_paths(run_dir):
    state = os.path.join(run_dir, STATE_DIR)
    return os.path.join(state, "checkpoint.weights.h5"), os.path.join(state, "progress.json")


def save_checkpoint(run_dir, model, progress):
    """Save weights and optimizer state, then the progress record that points at them."""
    weights, record = checkpoint_paths(run_dir)
    os.makedirs(os.path.dirname(weights), exist_ok=True)
    atomic_save(weights, model.save_weights)
    atomic_write_json(record, progress)


def load_checkpoint(run_dir, model):
    """Restore weights and optimizer state; returns the progress record, or None if there is none."""
    weights, record = checkpoint_paths(run_dir)
    progress = read_json(record)
    if progress is None or not os.path.exists(weights):
        return None
    model.optimizer.build(model.trainable_variables)
    model.load_weights(weights)
    return progress


def update_summary(run_dir, **fields):
    """Merge fields into the run's summary.json (written atomically); returns the new summary."""
    summary = read_json(os.path.join(run_dir, "summary.json"))
    summary = summary if isinstance(summary, dict) else {}
    summary.update(fields)
    atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary
