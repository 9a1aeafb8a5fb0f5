"""What a run folder records as it goes: the resumable checkpoint, summary.json, and metrics.csv read back.
"""

import csv
import os
from typing import Any, Optional

from vae_kl.process.atomic import atomic_save, atomic_write_json, read_json
from vae_kl.process.exits import first_line
from vae_kl.runs.folders import STATE_DIR, RunFolderError

try:
    import fcntl
except ImportError:  # Not on Windows: runs there go unlocked.
    fcntl = None


def read_csv_rows(path: str, max_rows: int = 100_000, max_bytes: int = 64 * 2 ** 20) -> list[dict[str, float]]:
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


def checkpoint_paths(run_dir: str) -> tuple[str, str]:
    state = os.path.join(run_dir, STATE_DIR)
    return os.path.join(state, "checkpoint.weights.h5"), os.path.join(state, "progress.json")


def save_checkpoint(run_dir: str, model: Any, progress: dict) -> None:
    """Save weights and optimizer state, then the progress record that points at them."""
    weights, record = checkpoint_paths(run_dir)
    os.makedirs(os.path.dirname(weights), exist_ok=True)
    atomic_save(weights, model.save_weights)
    atomic_write_json(record, progress)


def load_checkpoint(run_dir: str, model: Any) -> Optional[dict]:
    """Restore weights and optimizer state; returns the progress record, or None if there is none."""
    weights, record = checkpoint_paths(run_dir)
    progress = read_json(record)
    if progress is None or not os.path.exists(weights):
        return None
    model.optimizer.build(model.trainable_variables)
    model.load_weights(weights)
    return progress


def update_summary(run_dir: str, **fields: Any) -> dict:
    """Merge fields into the run's summary.json (written atomically); returns the new summary."""
    summary = read_json(os.path.join(run_dir, "summary.json"))
    summary = summary if isinstance(summary, dict) else {}
    summary.update(fields)
    atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary
