"""The wall time a user waits: the default run and a small sweep, phase by phase, ours against plain.

    python benchmarks/end_to_end.py                # about 4 minutes on 2 quiet cores
    python benchmarks/end_to_end.py --no-plain     # ours only
    python benchmarks/end_to_end.py --epochs 3     # a quick look (the phases, not the default run)

Runs exactly what the README tells a user to run, `python train.py --config config.yaml`, in a fresh
process (outputs go to a temporary folder), then the same run with every speed-up off
(model.fast_layers false, train.steps_per_execution 1, train.batch_shards 1), then a sweep of two
settings of 3 epochs (`sweep.py --grid loss.kl_weight=1,10 --set train.epochs=3`). The phases come
from the run's own summary.json (`timing.phases_seconds`, written by train.py's PhaseClock); what is
left of the wall time (the interpreter, the imports before training starts, the exit) is measured here
as the difference. "Gradient steps" are the training steps of every epoch, less the first epoch's
tracing; everything else is overhead. The last lines printed are `sweep_seconds=`,
`default_run_seconds=` and `overhead_seconds=` (ours).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN = ("model.fast_layers=false", "train.steps_per_execution=1", "train.batch_shards=1")
SWEEP = ("--grid", "loss.kl_weight=1,10", "--set", "train.epochs=3")
# (label, key in timing.phases_seconds); "outside" is the wall time the run's own clock does not see.
PHASES = (("start-up: TensorFlow, data, model, run folder", "startup"),
          ("tracing (first epoch beyond a later one)", "tracing"),
          ("gradient steps", "gradient_steps"),
          ("validation pass of every epoch", "validation"),
          ("between epochs: csv, grid, checkpoint, TensorBoard", "between_epochs"),
          ("final evaluation, figures, model.keras", "evaluation"),
          ("interpreter, imports before train(), exit", "outside"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "config.yaml"), help="The config to run.")
    parser.add_argument("--epochs", type=int, default=None, help="Override train.epochs (default: the config's).")
    parser.add_argument("--no-plain", action="store_true", help="Skip the run with every speed-up off.")
    parser.add_argument("--no-sweep", action="store_true", help="Skip the 2-setting, 3-epoch sweep.")
    parser.add_argument("--workers", type=int, default=1, help="The sweep's --workers (default 1).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a setting in every run and the sweep (repeatable), e.g. data.limit=600.")
    return parser.parse_args(argv)


def timed(command, log_path):
    """Run command from the repository root; returns its wall seconds. Exits on failure, naming the log."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if status:
        sys.exit(f"error: {' '.join(command[1:3])} ... exited with status {status}; see {log_path}.")
    return seconds


def train_once(args, folder, label, extra=()):
    """Time one train.py run; returns (wall seconds, {phase key: seconds})."""
    sets = [*args.overrides, f"output.dir={os.path.join(folder, label)}", *extra]
    if args.epochs:
        sets.append(f"train.epochs={args.epochs}")
    command = [sys.executable, "train.py", "--config", args.config, *[w for s in sets for w in ("--set", s)]]
    wall = timed(command, os.path.join(folder, f"{label}.log"))
    (run,) = os.listdir(os.path.join(folder, label))
    with open(os.path.join(folder, label, run, "summary.json")) as file:
        phases = dict(json.load(file)["timing"]["phases_seconds"])
    phases["tracing"] = phases["tracing"] or 0.0
    phases["outside"] = wall - sum(phases.values())
    return wall, phases


def print_table(results):
    labels = list(results)
    print(f"{'phase (seconds)':52s}" + "".join(f"{label:>10s}" for label in labels))
    for text, key in PHASES:
        print(f"{text:52s}" + "".join(f"{results[label][1][key]:10.1f}" for label in labels))
    print(f"{'wall time':52s}" + "".join(f"{results[label][0]:10.1f}" for label in labels))
    print(f"{'overhead: wall time less the gradient steps':52s}"
          + "".join(f"{results[label][0] - results[label][1]['gradient_steps']:10.1f}" for label in labels))


def main(argv=None):
    args = parse_args(argv)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; config {os.path.relpath(args.config, ROOT)}"
          + "".join(f", {item}" for item in args.overrides)
          + (f", train.epochs={args.epochs}" if args.epochs else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="vae-end-to-end-") as folder:
        results = {"ours": train_once(args, folder, "ours")}
        if not args.no_plain:
            results["plain"] = train_once(args, folder, "plain", PLAIN)
        print_table(results)
        sweep_seconds = None
        if not args.no_sweep:
            sets = [*args.overrides, f"output.dir={os.path.join(folder, 'sweep')}"]
            command = [sys.executable, "sweep.py", "--config", args.config, *SWEEP, "--workers", str(args.workers),
                       *[w for s in sets for w in ("--set", s)]]
            sweep_seconds = timed(command, os.path.join(folder, "sweep.log"))
            print(f"sweep {' '.join(SWEEP)} --workers {args.workers}: {sweep_seconds:.1f} s wall")
    if "plain" in results:
        print(f"plain_run_seconds={results['plain'][0]:.1f}")
    if sweep_seconds is not None:
        print(f"sweep_seconds={sweep_seconds:.1f}")
    wall, phases = results["ours"]
    print(f"default_run_seconds={wall:.1f}")
    print(f"overhead_seconds={wall - phases['gradient_steps']:.1f}")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
