"""Run folders: their names, the checks that they can be written, and which folder a run goes to.

A run folder `<output.dir>/<run_name>/` is never overwritten. Re-running a
command whose run is unfinished (killed, interrupted) resumes it; re-running one
whose run finished starts a fresh folder `<run_name>-2` (then -3, ...).
"""

import hashlib
import json
import os
import shutil
import tempfile
from typing import Optional

import yaml

from vae_kl.process import exits
from vae_kl.process.atomic import read_json
from vae_kl.spec import config
from vae_kl.spec.config import quote

try:
    import fcntl
except ImportError:  # Not on Windows: runs there go unlocked.
    fcntl = None


STATE_DIR = "state"  # Per-epoch checkpoint; removed when the run completes.
FINAL_STATUSES = ("complete", "diverged")
MIN_FREE_BYTES = 50 * 1024 * 1024
MAX_RUN_NAME = 100  # Characters.
MAX_RUN_NAME_BYTES = 200  # In UTF-8: with a '-N' suffix and temporary-file prefixes it fits a 255-byte file name.
UNLEARNED_TRAIN_KEYS = ("distribute",)  # Left out of config_fingerprint.
# Keys added after run folders were first named by a hash of their settings (in version 5: the MLP, the learning-rate
# schedule, Adam's settings, the fixed binarization of the test digits), left out of config_fingerprint while they
# hold their defaults: a run an earlier version started keeps its folder's name, and resumes.
LATER_KEYS = {"model": ("architecture", "mlp_hidden_units", "mlp_hidden_layers", "mlp_activation"),
              "train": ("lr_schedule", "lr_passes_scale", "adam_beta_1", "adam_beta_2", "adam_epsilon"),
              "data": ("binarize_seed",)}


class RunFolderError(exits.UserError):
    """The run folder cannot be used; the message says why and what to do."""


def config_fingerprint(cfg_dict: dict) -> str:
    """A short hash of the settings that change what is learned (not where outputs go).

    train.distribute is left out: replicas compute the single-device objective and gradient
    (slicing.GlobalBatch), so a run started on several devices may resume on one, and the names of
    run folders made before the key existed stay the same; so are LATER_KEYS at their defaults."""
    relevant = {k: v for k, v in cfg_dict.items() if k != "output"}
    if isinstance(relevant.get("train"), dict):
        relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in UNLEARNED_TRAIN_KEYS}
    for section, keys in LATER_KEYS.items():
        if isinstance(relevant.get(section), dict):
            defaults = config.SECTIONS[section].settings()
            relevant[section] = {k: v for k, v in relevant[section].items()
                                 if not (k in keys and k in defaults and v == defaults[k].default)}
    text = json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def default_run_name(cfg_dict: dict) -> str:
    loss = cfg_dict["loss"]
    weight = loss["kl_weight"] if loss["kl_weight"] is not None else f"n{loss['kl_weight_norm']}"
    return (f"{loss['likelihood']}_rec-{loss['reconstruction_reduction']}_kl-{loss['kl_reduction']}"
            f"_w{weight}_{config_fingerprint(cfg_dict)}")


def check_run_name(name: str, what: str = "output.run_name") -> str:
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


def check_could_write(folder: str) -> None:
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


def check_free_space(folder: str, path: str) -> None:
    """Refuse output.dir `folder` when the file system holding `path` has less than MIN_FREE_BYTES free."""
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise RunFolderError(f"output.dir '{folder}' has only {free // 2**20} MiB free; a run needs at least "
                             f"{MIN_FREE_BYTES // 2**20} MiB. Free space or choose another folder.")


def check_writable(folder: str) -> None:
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


def run_status(run_dir: str) -> Optional[str]:
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


def choose_run_dir(cfg_dict: dict) -> tuple[str, bool, str]:
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
