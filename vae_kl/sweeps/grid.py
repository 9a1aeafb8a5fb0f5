"""A sweep's plan: the grid of settings (× seeds), every run's validated config and folder label, checked
before anything is created or trained, and the sweep folder that records it (sweep.yaml, configs/, logs/).
"""

import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import yaml

from vae_kl.data import sources
from vae_kl.process import (
    atomic,
)
from vae_kl.reports import frontier
from vae_kl.reports.sweep_page import LOG_DIR, SEED_KEY, yaml_text
from vae_kl.runs import folders, locks
from vae_kl.spec import config

if TYPE_CHECKING:
    import argparse

MAX_RUNS = 10_000  # Runs one sweep plans; more is a study to split (each run is a process and a folder).
RESERVED_KEYS = ("output.dir", "output.run_name")  # The sweep decides where each run goes.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
FRONTIER_KEY = "loss.kl_weight"  # The one key --frontier sweeps.
FRONTIER_GRID = (0.25, 0.5, 1, 2, 4, 8, 16)  # --frontier's default β values: log-spaced, a factor of 2 apart.
FRONTIER_SEEDS = 3  # --frontier's default --seeds: the error bars need seeds.


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


def parse_grid_option(text: str) -> tuple[str, list]:
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


def read_sweep_section(raw: dict) -> tuple[Optional[str], list[tuple[str, Any]]]:
    """(name, [(key, values), ...]) from the config file's optional `sweep:` section."""
    section = raw.get("sweep") or {}
    if not isinstance(section, dict) or set(section) - {"name", "grid"}:
        raise config.ConfigError("The sweep section may hold only 'name' and 'grid' (a mapping of section.key "
                                 "to a list of values).")
    grid = section.get("grid") or {}
    if not isinstance(grid, dict):
        raise config.ConfigError(f"sweep.grid must map section.key to a list of values, received {config.quote(grid)}.")
    return section.get("name"), list(grid.items())


def check_grid(items: Iterable[tuple[Any, Any]]) -> dict[str, list]:
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


def check_frontier_grid(grid: dict[str, list]) -> None:
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


def positive_number(value: Any) -> bool:
    """Whether a grid value is a finite number > 0; a string counts if it reads as one (YAML reads 1e-3 as text,
    and config accepts it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and number > 0


def frontier_request(args: "argparse.Namespace") -> Optional[frontier.Request]:
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


def add_seeds(grid: dict[str, list], seeds: int, first_seed: int) -> dict[str, list]:
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


def make_label(settings: dict) -> str:
    """A readable folder name from the settings: the field names (sections only if ambiguous) and values."""
    names = [key.split(".")[1] for key in settings]
    if len(set(names)) < len(names):
        names = list(settings)
    text = "_".join(f"{name}-{yaml_text(value)}" for name, value in zip(names, settings.values()))
    label = re.sub(r"[^A-Za-z0-9.+-]+", "_", text)
    if len(label) > folders.MAX_RUN_NAME - 8:  # Room for a '_<n>' or '-<n>' suffix; the hash keeps it unique.
        label = label[:folders.MAX_RUN_NAME - 16] + "_" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return label


def plan_runs(raw: dict, grid: dict[str, list]) -> list[Run]:
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


def make_plan(args: "argparse.Namespace") -> Plan:
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


def sweep_folder(args: "argparse.Namespace", base: config.Config, grid: dict[str, list],
                 yaml_name: Optional[str]) -> tuple[dict, str]:
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


def frontier_seeds(args: "argparse.Namespace", base: config.Config, grid: dict[str, list],
                   yaml_name: Optional[str]) -> int:
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


def sweep_base(cfg_dict: dict) -> dict:
    """The base config as sweep.yaml records it: every field, except where outputs go (not what the sweep means)."""
    base = config.with_defaults(cfg_dict)
    for key in ("dir", "run_name"):
        base.get("output", {}).pop(key, None)
    return base


def same_sweep(stored: Any, wanted: dict) -> bool:
    """Whether a sweep.yaml holds the wanted sweep; fields added since it was written count at their defaults."""
    if not isinstance(stored, dict) or not isinstance(stored.get("base"), dict):
        return False
    return {**stored, "base": sweep_base(stored["base"])} == wanted


def prepare_folder(plan: Plan) -> locks.RunLock:
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


def config_path(plan: Plan, run: Run) -> str:
    return os.path.join(plan.folder, "configs", f"{run.label}.yaml")


def log_path(plan: Plan, run: Run) -> str:
    return os.path.join(plan.folder, LOG_DIR, f"{run.label}.log")
