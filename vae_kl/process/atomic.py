"""Files written atomically (a reader sees the old file or the new, never half of one) and read leniently.

Every file a run or a sweep keeps is written here: to a temporary `.tmp-<pid>-<name>` in the same
folder, flushed to disk, then renamed over the old one; `remove_stale_temp_files` deletes the
temporary files of writers that were killed.
"""

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

from vae_kl.process import signals

_TEMP_NAME = re.compile(r"\.tmp-(\d+)-")  # The temporary files: .tmp-<pid>-...
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers see old or new, never half."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{os.getpid()}-", suffix=os.path.basename(path))
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file ordinary permissions.
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_save(path: str, save_fn: Callable[[str], Any]) -> None:
    """Call save_fn(tmp_path) for a file whose writer insists on its own name, then rename."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_csv(path: str, rows: list) -> None:
    """Write a list of dicts as CSV atomically (the full history each time, so no epoch repeats)."""
    buffer = io.StringIO()
    if rows:
        # Every key of every row, in first-seen order: a run resumed by a newer version adds columns.
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)), restval="")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def remove_stale_temp_files(run_dir: str) -> None:
    """Delete .tmp-<pid>-* files in the run folder whose writing process is gone (killed mid-write)."""
    for folder, _, names in os.walk(run_dir):
        for name in names:
            match = _TEMP_NAME.match(name)
            if match and not signals.pid_alive(int(match.group(1))):
                try:
                    os.remove(os.path.join(folder, name))
                except OSError:
                    pass  # Gone already, or not ours to remove: harmless either way.

