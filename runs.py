"""Run folders: naming, safety checks, atomic writes, resumable checkpoints.

A run folder `<output.dir>/<run_name>/` is never overwritten. Re-running a
command whose run is unfinished (killed, interrupted) resumes it; re-running one
whose run finished starts a fresh folder `<run_name>-2` (then -3, ...).
"""

import csv
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile

import yaml

import config
import data

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130
STATE_DIR = "state"  # Per-epoch checkpoint; removed when the run completes.
FINAL_STATUSES = ("complete", "diverged")
MIN_FREE_BYTES = 50 * 1024 * 1024
_UMASK = os.umask(0)
os.umask(_UMASK)


class RunFolderError(ValueError):
    """The run folder cannot be used; the message says why and what to do."""


def available_cores():
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def atomic_write_bytes(path, data):
    """Write to a temporary file in the same folder, then rename: readers see old or new, never half."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
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


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_save(path, save_fn):
    """Call save_fn(tmp_path) for a file whose writer insists on its own name, then rename."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_csv(path, rows):
    """Write a list of dicts as CSV atomically (the full history each time, so no epoch repeats)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_csv_rows(path):
    """Rows of a CSV written by write_csv, with numbers as floats (epoch as int)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return []
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in rows]


def read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def config_fingerprint(cfg_dict):
    """A short hash of the settings that change what is learned (not where outputs go)."""
    relevant = {k: v for k, v in cfg_dict.items() if k != "output"}
    text = json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def default_run_name(cfg_dict):
    loss = cfg_dict["loss"]
    weight = loss["kl_weight"] if loss["kl_weight"] is not None else f"n{loss['kl_weight_norm']}"
    return (f"{loss['likelihood']}_rec-{loss['reconstruction_reduction']}_kl-{loss['kl_reduction']}"
            f"_w{weight}_{config_fingerprint(cfg_dict)}")


def check_run_name(name):
    """Refuse names that would leave the output folder or are awkward on any file system."""
    if name in ("", ".", "..") or os.path.isabs(name) or "/" in name or "\\" in name or "\0" in name:
        raise RunFolderError(f"output.run_name {name!r} must be a plain folder name (no '/', '..' or absolute "
                             f"path) so the run stays inside output.dir.")
    return name


def check_writable(folder):
    """Create the output folder if needed and prove we can write there, before any training."""
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise RunFolderError(f"Cannot write to output.dir '{folder}' ({error.strerror}); choose a writable folder.")
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise RunFolderError(f"output.dir '{folder}' has only {free // 2**20} MiB free; a run needs at least "
                             f"{MIN_FREE_BYTES // 2**20} MiB. Free space or choose another folder.")


def run_status(run_dir):
    summary = read_json(os.path.join(run_dir, "summary.json")) or {}
    return summary.get("status")


def _same_settings(run_dir, cfg_dict):
    try:
        with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as handle:
            stored = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(stored, dict) and config_fingerprint(stored) == config_fingerprint(cfg_dict)


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


def first_line(error, limit=200):
    """The first line of an exception's message, at most `limit` characters, for one-line errors."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def guard(action):
    """Run an entry point's action(); a user error becomes one `error:` line and exit status 2,
    Ctrl-C exit status 130. Returns the exit status (action's own, or 0)."""
    try:
        return action() or 0
    except (config.ConfigError, data.DataError, RunFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def update_summary(run_dir, **fields):
    """Merge fields into the run's summary.json (written atomically); returns the new summary."""
    summary = read_json(os.path.join(run_dir, "summary.json"))
    summary = summary if isinstance(summary, dict) else {}
    summary.update(fields)
    atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def print_result(validation, verdict, run_dir):
    """The end of a run on the console: the β = 1 numbers, the verdict in capitals and its advice."""
    per_dim = validation.get("kl_per_dim_nats")
    kl_text = f"KL per dim {[round(v, 3) for v in per_dim]}; " if per_dim else ""
    print(f"Validation (β = 1): -ELBO {validation['neg_elbo_nats']:.2f} nats/digit "
          f"= reconstruction {validation['reconstruction_nats']:.2f} + KL {validation['kl_nats']:.4f}; "
          f"IWAE (k={validation['iwae_k']}) {validation['iwae_nll_nats']:.2f} nats; {kl_text}"
          f"information per unit {[round(v, 3) for v in validation['information_per_unit_nats']]} nats; "
          f"active units (Burda) {validation['active_units']}/{validation['latent_dim']}.")
    print(f"Verdict: {verdict['state'].upper()}: {verdict['reason']}")
    print(f"Advice: {verdict['advice']}")
    print(f"Outputs in {run_dir}")
