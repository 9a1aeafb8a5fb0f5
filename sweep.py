"""Train every combination of a grid of settings with train.py, then compare them on one page.

    python sweep.py --config config.yaml --grid loss.kl_weight=0.001,0.01,0.1,1,10 \
        --grid loss.reconstruction_reduction=sum,mean [--seeds N] [--set KEY=VALUE ...] [--workers N] [--name NAME]
        [--backend local|ray [--address ADDRESS] [--cpus-per-run N] [--gpus-per-run N]]

The grid can instead come from a `sweep:` section (name, grid) of the config file.
--seeds N trains every setting with the seeds train.seed, train.seed + 1, ..., + N - 1
(the same as adding train.seed to the grid); the report aggregates over them.

    python sweep.py --config config.yaml --frontier [--grid loss.kl_weight=0.25,0.5,1,2,4,8,16] [--seeds 3]
        [--place RUN_OR_SWEEP_FOLDER ...] [--target-distortion D] [--target-rate R]

--frontier sweeps loss.kl_weight only (by default over 0.25, ..., 16, with --seeds 3 unless given) and adds
frontier.png and frontier.md (and a section of report.html): the rate-distortion frontier of Alemi
et al. 2018, with the runs of --place drawn beside it and the β that reaches --target-distortion or
--target-rate (without them: each placed GECO run's κ and capacity run's C). It only changes defaults
and adds outputs: sweep.yaml's spec is the same, so a finished sweep re-run with the same arguments
plus --frontier trains nothing and just writes the frontier.

Runs train in <output.dir>/sweep_<name>/<label>/; the sweep folder also holds
sweep.yaml, configs/, logs/, results.csv, results.md, comparison.png,
rate_distortion.png, report.html and, with --frontier, frontier.png and frontier.md.
Re-running skips finished runs and resumes unfinished ones. --backend ray runs each train.py as a Ray task (a local Ray
instance, or the cluster at --address); everything else is the same. Exit status: 0 all runs complete, 1 a run failed or diverged,
2 bad input (nothing trained), 130 interrupted.
"""

import argparse
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Quiet TensorFlow here (report) and in the children.

import yaml  # noqa: E402

from vae_kl.data import sources  # noqa: E402
from vae_kl.process import (  # noqa: E402
    atomic,  # noqa: E402
    exits,
    signals,
)
from vae_kl.reports import frontier  # noqa: E402
from vae_kl.reports.sweep_page import LOG_DIR, SEED_KEY, result_rows, write_outputs, yaml_text  # noqa: E402
from vae_kl.runs import folders, locks  # noqa: E402
from vae_kl.spec import config  # noqa: E402

ADDRESS_PROBE_SECONDS = 5.0  # How long a --address must take to accept a connection before it is refused.
RAY_START_SECONDS, RAY_STOP_SECONDS = 60.0, 15.0  # Bounds on starting and on stopping the local Ray instance.
MAX_RUNS = 10_000  # Runs one sweep plans; more is a study to split (each run is a process and a folder).
HERE = os.path.dirname(os.path.abspath(__file__))
RESERVED_KEYS = ("output.dir", "output.run_name")  # The sweep decides where each run goes.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
OWNER_WAIT_SECONDS = 60  # How long a run folder another live process holds is waited for.
STOP_WAIT_SECONDS = 60  # How long an interrupted train.py may take to save its state before it is killed.
PARENT_PID_VARIABLE = signals.PARENT_PID_VARIABLE  # A plain string here, so a Ray task carries it by value.
BACKENDS = ("local", "ray")
FRONTIER_KEY = "loss.kl_weight"  # The one key --frontier sweeps.
FRONTIER_GRID = (0.25, 0.5, 1, 2, 4, 8, 16)  # --frontier's default β values: log-spaced, a factor of 2 apart.
FRONTIER_SEEDS = 3  # --frontier's default --seeds: the error bars need seeds.
CLUSTER_REQUIREMENTS = "requirements-cluster.txt"


@dataclass
class Run:
    label: str  # Folder name, e.g. kl_weight-0.1_reconstruction_reduction-mean.
    settings: dict  # Grid key -> value for this run.
    cfg: config.Config  # The fully validated config train.py will receive.


@dataclass
class Plan:
    base: config.Config
    grid: dict
    spec: dict  # What sweep.yaml records; a different spec may not reuse the folder.
    folder: str
    runs: list
    workers: int
    frontier: object = None  # frontier.Request: what --frontier asks for; None without it.


def parse_grid_option(text):
    """`section.key=v1,v2,...` -> (key, [values]); each value is read as YAML, like a --set value."""
    key, sep, values_text = text.partition("=")
    if not sep:
        raise config.ConfigError(f"--grid expects KEY=V1,V2,... such as loss.kl_weight=0.1,1, "
                                 f"received {config.quote(text)}.")
    items = values_text.split(",")
    if any(not item.strip() for item in items):
        raise config.ConfigError(f"--grid {config.quote(key.strip())} needs comma-separated non-empty values, "
                                 f"received {config.quote(values_text)}.")
    return key.strip(), [config.read_value(item) for item in items]


def read_sweep_section(raw):
    """(name, [(key, values), ...]) from the config file's optional `sweep:` section."""
    section = raw.get("sweep") or {}
    if not isinstance(section, dict) or set(section) - {"name", "grid"}:
        raise config.ConfigError("The sweep section may hold only 'name' and 'grid' (a mapping of section.key "
                                 "to a list of values).")
    grid = section.get("grid") or {}
    if not isinstance(grid, dict):
        raise config.ConfigError(f"sweep.grid must map section.key to a list of values, received {config.quote(grid)}.")
    return section.get("name"), list(grid.items())


def check_grid(items):
    """Check the grid's shape (not its values, which config validates) and return it as a dict."""
    grid = {}
    for key, values in items:
        if not isinstance(key, str) or not re.fullmatch(r"\w+\.\w+", key):
            raise config.ConfigError(f"Grid keys are section.key such as loss.kl_weight, received {config.quote(key)}.")
        if key in RESERVED_KEYS:
            raise config.ConfigError(f"{key} cannot be swept: the sweep puts every run in its own folder.")
        if key in grid:
            raise config.ConfigError(f"Grid key {key} is given twice; list all its values once.")
        if not isinstance(values, list) or not values:
            raise config.ConfigError(f"Grid key {key} needs a non-empty list of values, "
                                     f"received {config.quote(values)}.")
        grid[key] = values
    if not grid:
        raise config.ConfigError("Nothing to sweep: give --grid KEY=V1,V2 or a sweep.grid section in the config.")
    return grid


def check_frontier_grid(grid):
    """--frontier's grid: loss.kl_weight alone, over at least two positive numbers (fixed β values)."""
    others = [key for key in grid if key != FRONTIER_KEY]
    if others:
        fix = ("give the seeds with --seeds N" if others == [SEED_KEY] else
               "drop those --grid options (or sweep.grid entries), or fix them for every run with --set KEY=VALUE")
        raise config.ConfigError(f"--frontier sweeps {FRONTIER_KEY} only, but the grid also varies "
                                 f"{', '.join(others)}; {fix}.")
    values = grid.get(FRONTIER_KEY, [])
    bad = [value for value in values if not positive_number(value)]
    if bad:
        raise config.ConfigError(f"--frontier needs positive numbers for {FRONTIER_KEY} (one fixed β per point), "
                                 f"received {config.quote(bad[0])}; list values > 0 such as "
                                 f"--grid {FRONTIER_KEY}=0.5,1,2 (GECO and capacity runs go in with --place).")
    if len(values) < 2:
        raise config.ConfigError(f"--frontier needs at least two {FRONTIER_KEY} values to draw a frontier, received "
                                 f"{len(values)}; list more, e.g. --grid {FRONTIER_KEY}=0.5,1,2.")


def positive_number(value):
    """Whether a grid value is a finite number > 0; a string counts if it reads as one (YAML reads 1e-3 as text,
    and config accepts it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and number > 0


def frontier_request(args):
    """--frontier's own options, checked before anything is trained: None without --frontier (whose
    options are then refused). Reads every --place folder (ConfigError if one is not a finished run or sweep)."""
    given = [flag for flag, value in (("--place", args.place), ("--target-distortion", args.target_distortion),
                                      ("--target-rate", args.target_rate)) if value not in (None, [])]
    if not args.frontier:
        if given:
            raise config.ConfigError(f"{given[0]} is read with --frontier only, and --frontier was not given; add "
                                     f"--frontier (to a finished sweep's own arguments it trains nothing more) or "
                                     f"drop {given[0]}.")
        return None
    for flag, value in (("--target-distortion", args.target_distortion), ("--target-rate", args.target_rate)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise config.ConfigError(f"{flag} must be a number of nats per digit > 0, received {value:g}; "
                                     f"give a positive value, e.g. {flag} 100.")
    placed = tuple(run for path in args.place for run in frontier.read_placed(path))
    return frontier.Request(placed, args.target_distortion, args.target_rate, args.command)


def add_seeds(grid, seeds, first_seed):
    """--seeds N as a last grid key train.seed = first_seed, first_seed + 1, ...; with N = 1 the grid
    is unchanged, so a sweep folder made before --seeds existed is still the same sweep."""
    if seeds < 1:
        raise config.ConfigError(f"--seeds must be >= 1, received {seeds}.")
    if seeds > MAX_RUNS:
        raise config.ConfigError(f"--seeds must be at most {MAX_RUNS}, received {seeds}.")
    if seeds == 1:
        return grid
    if SEED_KEY in grid:
        raise config.ConfigError(f"Give either --seeds or a {SEED_KEY} grid, not both.")
    return {**grid, SEED_KEY: [first_seed + i for i in range(seeds)]}


def make_label(settings):
    """A readable folder name from the settings: the field names (sections only if ambiguous) and values."""
    names = [key.split(".")[1] for key in settings]
    if len(set(names)) < len(names):
        names = list(settings)
    text = "_".join(f"{name}-{yaml_text(value)}" for name, value in zip(names, settings.values()))
    label = re.sub(r"[^A-Za-z0-9.+-]+", "_", text)
    if len(label) > folders.MAX_RUN_NAME - 8:  # Room for a '_<n>' or '-<n>' suffix; the hash keeps it unique.
        label = label[:folders.MAX_RUN_NAME - 16] + "_" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return label


def plan_runs(raw, grid):
    """Validate every combination with config's own validator, before anything is created or trained."""
    planned, seen, labels = [], {}, set()
    for picks in itertools.product(*(list(enumerate(values)) for values in grid.values())):
        settings = {key: value for key, (_, value) in zip(grid, picks)}
        sets = [f"{key}={yaml_text(value)}" for key, value in settings.items()]
        try:
            cfg = config.from_dict(config.apply_overrides(raw, sets), extra_sections=("sweep",))
        except config.ConfigError as error:
            raise config.ConfigError(f"grid setting {config.quote(' '.join(sets))}: {error}")
        # Compare what the values mean, not how they are written: 1 and 1.0 train the same run.
        earlier = seen.setdefault(json.dumps(cfg.to_dict(), sort_keys=True), picks)
        if earlier is not picks:
            key, (_, first), (_, again) = next(item for item in zip(grid, earlier, picks) if item[1] != item[2])
            raise config.ConfigError(f"Grid key {key} repeats a value: {config.quote(first)} and "
                                     f"{config.quote(again)} mean the same setting; list each value once.")
        label = make_label(settings)
        if label in labels:  # Two values that only differ in odd characters.
            label += f"_{len(planned) + 1}"
        labels.add(label)
        planned.append(Run(label, settings, cfg))
    return planned


def make_plan(args):
    """Everything the sweep will do, fully validated; raises ConfigError and creates nothing."""
    if args.workers < 1:
        raise config.ConfigError(f"--workers must be >= 1, received {args.workers}.")
    request = frontier_request(args)
    base, raw = config.load(args.config, args.overrides, extra_sections=("sweep",))
    yaml_name, yaml_grid = read_sweep_section(raw)
    items = [parse_grid_option(text) for text in args.grid] if args.grid else yaml_grid
    if args.frontier and not items:
        items = [(FRONTIER_KEY, list(FRONTIER_GRID))]
    grid = check_grid(items)
    if args.frontier:
        check_frontier_grid(grid)
    seeds = args.seeds if args.seeds is not None else 1 if not args.frontier else \
        frontier_seeds(args, base, grid, yaml_name)
    grid = add_seeds(grid, seeds, base.train.seed)
    count = math.prod(len(values) for values in grid.values())
    if count > MAX_RUNS:  # Checked before planning: a million combinations would take long just to validate.
        raise config.ConfigError(f"The sweep has {count} runs (the grid's sizes times --seeds); at most {MAX_RUNS} "
                                 f"are planned at once, so split it into smaller sweeps.")
    planned = plan_runs(raw, grid)
    for data_cfg in {repr(run.cfg.data): run.cfg.data for run in planned}.values():
        sources.peek(data_cfg)  # A bad data.path is refused here, before any run starts (DataError: exit 2).
    spec, folder = sweep_folder(args, base, grid, yaml_name)
    return Plan(base, grid, spec, folder, planned, args.workers, request)


def sweep_folder(args, base, grid, yaml_name):
    """(spec, folder): what sweep.yaml records of the sweep of `grid`, and <output.dir>/sweep_<name>."""
    spec = {"grid": grid, "base": sweep_base(base.to_dict())}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:6]
    name = args.name or yaml_name or "_".join(key.split(".")[1] for key in grid) + f"_{digest}"
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise config.ConfigError(f"The sweep name must be letters, digits, '.', '_' or '-', "
                                 f"received {config.quote(name)}.")
    folders.check_run_name(f"sweep_{name}", "The sweep folder")
    if base.output.run_name is not None:  # Unused (each run is named after its settings), but still checked.
        folders.check_run_name(base.output.run_name)
    return spec, os.path.join(base.output.dir, f"sweep_{name}")


def frontier_seeds(args, base, grid, yaml_name):
    """--frontier's seeds when --seeds is not given: FRONTIER_SEEDS, except where the folder this command
    names already holds the plain sweep of this grid with one seed (its own default). That sweep is kept as
    it is, so --frontier added to its arguments trains nothing; its points have no error bars."""
    spec, folder = sweep_folder(args, base, grid, yaml_name)  # The grid without train.seed: the one-seed sweep.
    spec_path = os.path.join(folder, "sweep.yaml")
    if os.path.isfile(spec_path) and same_sweep(config.read_yaml(spec_path), yaml.safe_load(yaml.safe_dump(spec))):
        print(f"note: {folder} holds this grid's sweep with one seed (no --seeds was given to it); --frontier draws "
              f"it as it is, without error bars (for them: --seeds {FRONTIER_SEEDS} and another --name).", flush=True)
        return 1
    return FRONTIER_SEEDS


def sweep_base(cfg_dict):
    """The base config as sweep.yaml records it: every field, except where outputs go (not what the sweep means)."""
    base = config.with_defaults(cfg_dict)
    for key in ("dir", "run_name"):
        base.get("output", {}).pop(key, None)
    return base


def same_sweep(stored, wanted):
    """Whether a sweep.yaml holds the wanted sweep; fields added since it was written count at their defaults."""
    if not isinstance(stored, dict) or not isinstance(stored.get("base"), dict):
        return False
    return {**stored, "base": sweep_base(stored["base"])} == wanted


def prepare_folder(plan):
    """Create the sweep folder, or check an existing one holds this very sweep; write each run's config.
    Returns the folder's lock (locks.lock_folder): one sweep at a time per folder, held until it ends."""
    spec_path = os.path.join(plan.folder, "sweep.yaml")
    wanted = yaml.safe_load(yaml.safe_dump(plan.spec))  # Compare as YAML reads it back.
    existed = os.path.isdir(plan.folder) and any(name != locks.LOCK_FILE for name in os.listdir(plan.folder))
    if existed and not os.path.exists(spec_path):
        raise config.ConfigError(f"{plan.folder} exists but holds no sweep.yaml; choose another --name.")
    folders.check_writable(plan.base.output.dir)
    # Before reading sweep.yaml: of two identical sweeps started at once, the second waits for nothing and
    # trains nothing; it is refused here.
    lock = locks.lock_folder(plan.folder, "{folder} is being swept by process {owner}; wait for it to finish (then "
                                         "run the same command to fill any gaps) or use another --name.")
    if os.path.exists(spec_path) and not same_sweep(config.read_yaml(spec_path), wanted):
        lock.close()
        raise config.ConfigError(f"{plan.folder} holds a different sweep (its sweep.yaml differs); "
                                 f"use another --name, or the settings recorded there.")
    for sub in ("configs", LOG_DIR):
        os.makedirs(os.path.join(plan.folder, sub), exist_ok=True)
    atomic.atomic_write_text(spec_path, yaml.safe_dump(plan.spec, sort_keys=False, allow_unicode=True))
    for run in plan.runs:
        cfg = run.cfg.to_dict()
        cfg["output"].update(dir=plan.folder, run_name=run.label)
        atomic.atomic_write_text(config_path(plan, run), yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return lock


def config_path(plan, run):
    return os.path.join(plan.folder, "configs", f"{run.label}.yaml")


def log_path(plan, run):
    return os.path.join(plan.folder, LOG_DIR, f"{run.label}.log")


def threads_per_run(workers):
    """Each run's share of this machine's cores when `workers` runs train at once."""
    return max(1, signals.available_cores() // workers)


def thread_overrides(threads):
    """The environment variables that hold one train.py to `threads` CPU threads.

    TensorFlow reads TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS when it creates its
    thread pools (checked on TF 2.21); OMP_NUM_THREADS covers oneDNN's OpenMP pool.
    """
    return {name: str(max(1, int(threads))) for name in THREAD_VARIABLES}


def train_process(command, log_file, overrides, stop_wait=STOP_WAIT_SECONDS):
    """Run one train.py as a child of this process, its output appended to log_file; returns its exit code.

    Both backends run every run through this function: the local one in a thread of the sweep, the Ray
    one inside a Ray task, on whichever machine Ray chose (the sweep folder must then be on a file system
    every machine sees). It uses only the standard library, so Ray can ship it by value.
    overrides: variables on top of this process's environment (a Ray worker's holds the GPUs Ray gave
    it). The child gets this process's pid as its parent, so it stops, resumably, if this process dies,
    even by SIGKILL. If this call is interrupted (ray.cancel raises KeyboardInterrupt in the task), the
    child gets SIGTERM, train.py's Ctrl-C, and stop_wait seconds to save its state.
    """
    env = dict(os.environ, **overrides, **{PARENT_PID_VARIABLE: str(os.getpid())})
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            while True:  # Polling: ray.cancel sets Python's interrupt flag, which a blocking wait never sees.
                try:
                    return child.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(stop_wait)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise


class LocalExecutor:
    """Runs train_process in this process; the sweep's thread pool of --workers threads calls it."""

    name = "local"

    def __init__(self, workers):
        self.workers, self.overrides = workers, thread_overrides(threads_per_run(workers))

    def pool_size(self, todo):
        return self.workers

    def run(self, command, log_file):
        return train_process(command, log_file, self.overrides)

    def cancel(self):
        """Nothing to do: Ctrl-C reaches the children through the terminal's process group."""

    def close(self):
        pass


class RayExecutor:
    """Runs train_process as one Ray task per run, with one run's resources declared to Ray.

    Ray decides how many runs train at once from those resources: num_cpus = the share of cores the local
    backend gives a run (cores // --workers, or --cpus-per-run), num_gpus = --gpus-per-run. The sweep keeps
    one thread per run waiting for its task, so the progress lines, the statuses and the resume logic are
    the local backend's ("started" then means submitted to Ray).
    """

    name = "ray"

    def __init__(self, ray, cpus, gpus, head=None):
        """head: the LocalRayHead this sweep started, stopped by close(); None for a cluster (--address)."""
        self.ray, self.cpus, self.gpus, self.head = ray, cpus, gpus, head
        self.task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(train_process)
        self.overrides = thread_overrides(cpus)
        self.pending, self.lock, self.cancelled = set(), threading.Lock(), False

    def pool_size(self, todo):
        return max(1, len(todo))  # Every run is submitted; Ray queues what its resources cannot run yet.

    def run(self, command, log_file):
        with self.lock:
            if self.cancelled:
                return exits.EXIT_INTERRUPTED
            ref = self.task.remote(command, log_file, self.overrides)
            self.pending.add(ref)
        try:
            return self.ray.get(ref)
        except (self.ray.exceptions.TaskCancelledError, self.ray.exceptions.RayError) as error:
            if self.cancelled:
                return exits.EXIT_INTERRUPTED
            with open(log_file, "a", encoding="utf-8") as log:  # The run is reported failed, with this reason.
                log.write(f"sweep.py: the Ray task failed: {exits.first_line(error)}\n")
            return exits.EXIT_SWEEP_RUN_FAILED
        finally:
            with self.lock:
                self.pending.discard(ref)

    def cancel(self):
        """Ctrl-C: cancel every task (a running one gets KeyboardInterrupt, and train_process hands its
        train.py a SIGTERM), then wait for them to end, so each run has saved its state."""
        with self.lock:
            self.cancelled = True
            pending = list(self.pending)
        for ref in pending:
            self.ray.cancel(ref)
        if pending:
            self.ray.wait(pending, num_returns=len(pending), timeout=STOP_WAIT_SECONDS + 10)

    def close(self):
        self.ray.shutdown()
        if self.head:
            self.head.stop()


def make_executor(args):
    """The backend's executor; for ray, import it and connect (or start a local instance). Raises
    ConfigError on bad options, a missing ray or an unreachable cluster, before anything is created."""
    if args.gpus_per_run < 0 or (args.cpus_per_run is not None and args.cpus_per_run <= 0):
        raise config.ConfigError("--gpus-per-run must be >= 0 and --cpus-per-run > 0.")
    if args.backend == "local":
        if args.address or args.gpus_per_run or args.cpus_per_run is not None:
            raise config.ConfigError("--address, --cpus-per-run and --gpus-per-run are read by --backend ray only.")
        return LocalExecutor(args.workers)
    if not args.address:
        # Ray's token authentication, with a token of this sweep's own for the Ray instance it starts (and its
        # processes inherit). Before Ray is imported: it reads these variables once, then.
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        import ray  # Optional: only this backend needs it.
    except ImportError:
        raise config.ConfigError(f"--backend ray needs the ray package, which is not installed; "
                                 f"pip install -r {CLUSTER_REQUIREMENTS}.")
    try:
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers need not import sweep.py.
    except (ImportError, AttributeError, ValueError):
        pass  # Run as a script, this module is __main__, which cloudpickle ships by value anyway.
    cpus = args.cpus_per_run if args.cpus_per_run is not None else threads_per_run(args.workers)
    if args.address:
        check_answers(args.address)
    head = None if args.address else LocalRayHead(signals.available_cores())
    try:
        try:
            ray.init(address=args.address or head.address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise config.ConfigError(f"cannot start or reach Ray{f' at {args.address}' if args.address else ''}: "
                                     f"{exits.first_line(error)}")
        check_resources(ray, cpus, args.gpus_per_run)
    except BaseException:  # Nothing of the sweep's own Ray instance outlives a refusal or a Ctrl-C here.
        if head:
            head.stop()
        raise
    return RayExecutor(ray, cpus, args.gpus_per_run, head)


# The local Ray instance's keeper, run as `python -c` in a session of its own with Ray's processes: it starts
# `ray start --head --block`, waits for its stdin (a pipe from the sweep) to close, which happens however the
# sweep ends (SIGKILL included), and then ends its whole process group: Ray's processes, agents included,
# and the train.py processes its tasks started. (ray.init's own local instance leaves its agents alive.)
_RAY_KEEPER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
head = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
sys.stdin.buffer.read()
os.killpg(0, signal.SIGTERM)
time.sleep(float(os.environ.get("RAY_KEEPER_GRACE", "5")))
os.killpg(0, signal.SIGKILL)
"""


class LocalRayHead:
    """A Ray instance on this machine that lives exactly as long as the sweep (see _RAY_KEEPER).

    Args:
        cpus: the CPUs it offers (this machine's cores).
    Raises ConfigError if it does not answer within RAY_START_SECONDS.
    """

    def __init__(self, cpus):
        with socket.socket() as probe:  # A free port for its GCS.
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        command = [sys.executable, "-c", _RAY_KEEPER, sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
                   "--block", f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                   "--include-dashboard=false", "--disable-usage-stats"]
        self.keeper = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + RAY_START_SECONDS
        while unanswered("127.0.0.1", port, seconds=1):
            if self.keeper.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise config.ConfigError(f"a local Ray instance did not start within {RAY_START_SECONDS:g} s "
                                         f"(`ray start --head` failed); check `ray start --head` by hand.")
            time.sleep(0.25)


    def stop(self):
        """End the instance and everything it started (closing the keeper's pipe), and wait for that."""
        with contextlib.suppress(OSError):
            self.keeper.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.keeper.wait(timeout=RAY_STOP_SECONDS)


def check_answers(address, seconds=ADDRESS_PROBE_SECONDS):
    """Refuse a Ray address (host:port or ray://host:port) nobody answers at within `seconds`: ray.init
    itself retries for minutes. "auto" and other forms are left to Ray."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d{1,5})", address)
    if not match:
        return
    error = unanswered(match.group(1), int(match.group(2)), seconds)
    if error:
        raise config.ConfigError(f"the Ray cluster at {address} did not answer within {seconds:g} s "
                                 f"({error.strerror or type(error).__name__}); start it (ray start --head) or "
                                 f"check --address.")


def unanswered(host, port, seconds):
    """None when something accepts a connection at host:port within `seconds`, else the OSError saying why not."""
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except OSError as error:
        return error
    return None


def check_resources(ray, cpus, gpus):
    """Refuse a run that asks for more CPUs or GPUs than the whole cluster has: Ray would queue it forever."""
    total = ray.cluster_resources()
    for kind, asked, option in (("CPU", cpus, "--cpus-per-run"), ("GPU", gpus, "--gpus-per-run")):
        if asked > total.get(kind, 0):
            ray.shutdown()
            raise config.ConfigError(f"{option} {asked:g} asks for more {kind}s than the Ray cluster has "
                                     f"({total.get(kind, 0):g}), so no run could ever start; lower {option}.")


def clear_stillborn(run_dir):
    """Remove a run folder train.py was killed in before it wrote summary.json: it holds no results,
    and train.py would leave it alone and train into '<label>-2' instead. A folder a live process
    holds is being set up, not stillborn."""
    if os.path.isdir(run_dir) and folders.run_status(run_dir) is None and \
            not os.path.isdir(os.path.join(run_dir, folders.STATE_DIR)) and locks.lock_holder(run_dir) is None:
        shutil.rmtree(run_dir)


def wait_for_owner(run_dir):
    """Wait up to OWNER_WAIT_SECONDS for another process training in run_dir (say, the child of a sweep
    killed a moment ago, still saving its state) to let go. Returns its pid if it still holds the folder."""
    deadline = time.monotonic() + OWNER_WAIT_SECONDS
    while True:
        owner = locks.lock_holder(run_dir)
        if owner is None or time.monotonic() >= deadline:
            return owner
        time.sleep(0.2)


class Progress:
    """Prints a line whenever a run starts or finishes: runs finished of total, what runs now, an ETA."""

    def __init__(self, total, finished, workers):
        self.total, self.finished, self.workers = total, finished, workers
        self.running, self.walls, self.lock = [], [], threading.Lock()

    def started(self, label):
        with self.lock:
            self.running.append(label)
            self._print(f"started {label}")

    def ended(self, label, status, seconds):
        with self.lock:
            self.running.remove(label)
            self.finished += 1
            self.walls.append(seconds)
            self._print(f"{status} {label} in {seconds:.0f}s")

    def _print(self, event):
        eta = ""
        if self.walls and self.finished < self.total:  # Runs finished in this invocation are the honest clock.
            waves = math.ceil((self.total - self.finished) / self.workers)
            eta = f" | ETA {format_seconds(sum(self.walls) / len(self.walls) * waves)}"
        print(f"[{self.finished}/{self.total} finished] {event} | running: {', '.join(self.running) or '-'}{eta}",
              flush=True)


def format_seconds(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def train_one(plan, run, executor, progress):
    """Run train.py for one setting through the executor, its output appended to logs/<label>.log.
    Returns (status, seconds)."""
    run_dir = os.path.join(plan.folder, run.label)
    owner = wait_for_owner(run_dir)
    if owner is not None:  # Never train the same setting twice at once, nor into '<label>-2'.
        print(f"busy {run.label}: process {owner} is still training it; run the sweep again when it ends.",
              flush=True)
        return "busy", 0.0
    clear_stillborn(run_dir)
    command = [sys.executable, os.path.join(HERE, "train.py"), "--config", config_path(plan, run)]
    progress.started(run.label)
    begin = time.monotonic()
    code = executor.run(command, log_path(plan, run))
    seconds = time.monotonic() - begin
    status = folders.run_status(run_dir)  # summary.json is the authority; the exit code only fills gaps.
    if status not in folders.FINAL_STATUSES:
        status = "interrupted" if code == exits.EXIT_INTERRUPTED else "failed"
    progress.ended(run.label, status, seconds)
    return status, seconds


def finished_futures(futures, poll_seconds=0.5):
    """as_completed, waking every poll_seconds: a Ctrl-C that lands on another thread (Ray's, a pool's)
    only sets Python's flag, which the main thread acts on when it runs, not while blocked in a wait."""
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(pending, timeout=poll_seconds,
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        yield from done


def run_all(plan, executor=None):
    """Train the runs that are not finished yet, through executor (default: the local backend).
    Returns ({label: status}, {label: wall seconds})."""
    executor = executor or LocalExecutor(plan.workers)
    statuses, todo = {}, []
    for run in plan.runs:
        status = folders.run_status(os.path.join(plan.folder, run.label))
        if status in folders.FINAL_STATUSES:  # A diverged run would diverge again: report it, do not retry.
            print(f"skipped {run.label}: already {status}")
            statuses[run.label] = status
        else:
            todo.append(run)
    walls_path = os.path.join(plan.folder, "wall_seconds.json")
    walls = atomic.read_json(walls_path) or {}
    progress = Progress(len(plan.runs), len(statuses), plan.workers)
    with concurrent.futures.ThreadPoolExecutor(executor.pool_size(todo)) as pool:
        futures = {pool.submit(train_one, plan, run, executor, progress): run for run in todo}
        try:
            for future in finished_futures(futures):
                label = futures[future].label
                statuses[label], seconds = future.result()
                walls[label] = walls.get(label, 0.0) + seconds  # A resumed run's wall time adds up.
                atomic.atomic_write_json(walls_path, walls)
        except KeyboardInterrupt:  # Local children got the same Ctrl-C; Ray tasks are cancelled. Both save state.
            pool.shutdown(wait=False, cancel_futures=True)
            executor.cancel()
            pool.shutdown(wait=True)
            raise
    return statuses, walls


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML config file; may hold a sweep: section (name, grid).")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="Sweep one setting over values, e.g. --grid loss.kl_weight=0.1,1,10 (repeatable; "
                             "runs the cross product; replaces the config file's sweep.grid).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one base setting for every run, e.g. --set train.epochs=5 (repeatable).")
    parser.add_argument("--seeds", type=int, default=None, help="Train every setting with N seeds: train.seed, "
                                                                "train.seed + 1, ... (default 1, with --frontier "
                                                                f"{FRONTIER_SEEDS}); the report gives mean ± "
                                                                "standard error over them.")
    parser.add_argument("--workers", type=int, default=1, help="Runs trained in parallel (default 1); the cores "
                                                               "are shared out between them.")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: train.py children of this process (default); ray: one Ray task per run "
                             "(pip install -r requirements-cluster.txt).")
    parser.add_argument("--address", default=None, help="ray: the cluster to join, e.g. auto or ray://head:10001 "
                                                        "(default: start a local Ray instance).")
    parser.add_argument("--cpus-per-run", type=float, default=None,
                        help="ray: CPUs each run asks Ray for (default: cores // --workers, the local share).")
    parser.add_argument("--gpus-per-run", type=float, default=0, help="ray: GPUs each run asks Ray for (default 0).")
    parser.add_argument("--name", default=None, help="Sweep folder <output.dir>/sweep_NAME (default: sweep.name, "
                                                     "else the grid keys and a hash of the settings).")
    group = parser.add_argument_group(
        "the rate-distortion frontier", "--frontier only changes defaults and adds outputs (frontier.png, frontier.md, "
        "a section of report.html): sweep.yaml is the same, so a finished sweep re-run with the same arguments "
        "plus --frontier trains nothing and just writes the frontier.")
    group.add_argument("--frontier", action="store_true",
                       help=f"Sweep {FRONTIER_KEY} only (default grid {','.join(map(str, FRONTIER_GRID))}; "
                            f"--seeds {FRONTIER_SEEDS} unless given) and draw rate against distortion, one point per "
                            f"β with ± standard-error bars and the slope −β.")
    group.add_argument("--place", action="append", default=[], metavar="PATH",
                       help="--frontier: draw the runs of a finished run folder (summary.json) or sweep folder "
                            "(sweep.yaml) beside the frontier: GECO runs with κ and their final β, capacity runs "
                            "with C (repeatable).")
    group.add_argument("--target-distortion", type=float, default=None, metavar="D",
                       help="--frontier: say which β reaches a distortion of D nats per digit (log β interpolated "
                            "between the neighbouring β).")
    group.add_argument("--target-rate", type=float, default=None, metavar="R",
                       help="--frontier: say which β reaches a rate (KL) of R nats per digit.")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "sweep.py", *argv])  # For the frontier's page.
    return args


def main(argv=None):
    args = parse_args(argv)
    return exits.guard(lambda: sweep(args))  # One error path: one `error:` line and process.py's exit statuses.


def sweep(args):
    """Plan, train and report the sweep; returns its exit status."""
    plan = make_plan(args)
    executor, lock = make_executor(args), None
    try:
        lock = prepare_folder(plan)
        where = (f"{plan.workers} worker(s)" if executor.name == "local" else
                 f"Ray tasks of {executor.cpus:g} CPU(s)" + (f" and {executor.gpus:g} GPU(s)" if executor.gpus else ""))
        print(f"Sweep of {len(plan.runs)} run(s) in {plan.folder} with {where}.", flush=True)
        try:
            statuses, walls = run_all(plan, executor)
        except KeyboardInterrupt:
            print("\nInterrupted. Run the same command again to resume.", file=sys.stderr)
            return exits.EXIT_INTERRUPTED
        return report(plan, statuses, walls)
    finally:
        executor.close()
        if lock is not None:
            lock.close()


def report(plan, statuses, walls):
    """Write the sweep's table, figures and page from its runs; returns 0, or EXIT_SWEEP_RUN_FAILED if a run failed."""
    from vae_kl.process import (
        quiet,  # The report loads the models: TensorFlow, whose start-up lines stay off the console.
    )

    tf_log = os.path.join(plan.folder, LOG_DIR, "tensorflow_startup.log")
    quiet.import_tensorflow(tf_log)
    if plan.base.output.tensorboard:
        from vae_kl.tracking import tensorboard_log  # Deferred with TensorFlow, which it needs.

        grid = {key: values for key, values in plan.grid.items()}
        tensorboard_log.write_sweep_hparams(plan.folder, grid)
    rows = result_rows(plan, statuses, walls)
    sections = [frontier.write_frontier(plan.folder, rows, plan.frontier)] if plan.frontier else []
    with quiet.quiet_stderr(tf_log):  # Keras prints loading warnings of its own through the same stream.
        summary = write_outputs(plan, rows, sections)
    print(summary)
    if plan.frontier:
        print(f"Frontier: {os.path.join(plan.folder, frontier.PAGE)} and {frontier.FIGURE}")
    print(f"Report: {os.path.join(plan.folder, 'report.html')}")
    return 0 if all(status == "complete" for status in statuses.values()) else exits.EXIT_SWEEP_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
