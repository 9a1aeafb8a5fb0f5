"""Train every combination of a grid of settings with train.py, then compare them on one page.

    python sweep.py --config config.yaml --grid loss.kl_weight=0.001,0.01,0.1,1,10 \
        --grid loss.reconstruction_reduction=sum,mean [--seeds N] [--set KEY=VALUE ...] [--workers N] [--name NAME]
        [--backend local|ray [--address ADDRESS] [--cpus-per-run N] [--gpus-per-run N]]
    python sweep.py --config config.yaml --frontier [--grid loss.kl_weight=0.25,0.5,1,2,4,8,16] [--seeds 3]
        [--place RUN_OR_SWEEP_FOLDER ...] [--target-distortion D] [--target-rate R]

The grid can instead come from a `sweep:` section (name, grid) of the config file. --seeds N trains every
setting with the seeds train.seed, ..., train.seed + N - 1; the report aggregates over them. --frontier
draws the rate-distortion frontier of a β sweep (Alemi et al. 2018) with GECO and capacity runs placed
beside it (docs/sweeps.md). Runs train in <output.dir>/sweep_<name>/<label>/, beside sweep.yaml, configs/,
logs/, results.csv, results.md, the figures and report.html. Re-running skips finished runs and resumes
unfinished ones. --backend ray runs each train.py as a Ray task (a local Ray instance, or the cluster at
--address). Exit status: 0 all runs complete, 1 a run failed or diverged, 2 bad input (nothing trained),
4 an environment fault, 130 interrupted.
"""

import os
import shlex
import sys

from vae_kl.process import exits
from vae_kl.reports import frontier
from vae_kl.reports.sweep_page import LOG_DIR, result_rows, write_outputs
from vae_kl.sweeps import executors, grid, runner
from vae_kl.tracking import mlflow_log

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Quiet TensorFlow here (the report) and in the children.
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")


def parse_args(argv):
    parser = exits.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML config file; may hold a sweep: section (name, grid).")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="Sweep one setting over values, e.g. --grid loss.kl_weight=0.1,1,10 (repeatable; "
                             "runs the cross product; replaces the config file's sweep.grid).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one base setting for every run, e.g. --set train.epochs=5 (repeatable).")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"Train every setting with N seeds: train.seed, train.seed + 1, ... (default 1, with "
                             f"--frontier {grid.FRONTIER_SEEDS}); the report gives mean ± standard error over them.")
    parser.add_argument("--workers", type=int, default=1,
                        help="Runs trained in parallel (default 1); the cores are shared out between them.")
    parser.add_argument("--backend", choices=executors.BACKENDS, default="local",
                        help="local: train.py children of this process (default); ray: one Ray task per run "
                             f"(pip install -r {executors.CLUSTER_REQUIREMENTS}).")
    parser.add_argument("--address", default=None, help="ray: the cluster to join, e.g. auto or ray://head:10001 "
                                                        "(default: start a local Ray instance).")
    parser.add_argument("--cpus-per-run", type=float, default=None,
                        help="ray: CPUs each run asks Ray for (default: cores // --workers, the local share).")
    parser.add_argument("--gpus-per-run", type=float, default=0, help="ray: GPUs each run asks Ray for (default 0).")
    parser.add_argument("--name", default=None, help="Sweep folder <output.dir>/sweep_NAME (default: sweep.name, "
                                                     "else the grid keys and a hash of the settings).")
    frontier_options(parser.add_argument_group(
        "the rate-distortion frontier", "--frontier only changes defaults and adds outputs (frontier.png, frontier.md, "
        "a section of report.html): sweep.yaml is the same, so a finished sweep re-run with the same arguments "
        "plus --frontier trains nothing and just writes the frontier."))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "sweep.py", *argv])  # For the frontier's page.
    return args


def frontier_options(group):
    group.add_argument("--frontier", action="store_true",
                       help=f"Sweep {grid.FRONTIER_KEY} only (default grid {','.join(map(str, grid.FRONTIER_GRID))}; "
                            f"--seeds {grid.FRONTIER_SEEDS} unless given) and draw rate against distortion, one point "
                            f"per β with ± standard-error bars and the slope −β.")
    group.add_argument("--place", action="append", default=[], metavar="PATH",
                       help="--frontier: draw the runs of a finished run folder (summary.json) or sweep folder "
                            "(sweep.yaml) beside the frontier: GECO runs with κ and their final β, capacity runs "
                            "with C (repeatable).")
    group.add_argument("--target-distortion", type=float, default=None, metavar="D",
                       help="--frontier: say which β reaches a distortion of D nats per digit (log β interpolated "
                            "between the neighbouring β).")
    group.add_argument("--target-rate", type=float, default=None, metavar="R",
                       help="--frontier: say which β reaches a rate (KL) of R nats per digit.")


def main(argv=None):
    return exits.guard(lambda: sweep(parse_args(argv)))  # One error path: one `error:` line, exits' statuses.


def sweep(args):
    """Plan, train and report the sweep; returns its exit status."""
    plan = grid.make_plan(args)  # Every run's config validated: a bad one is refused before anything is made.
    tracked = plan.base.output.tracking == "mlflow"
    if tracked:
        mlflow_log.check(plan.base.output.dir)
    executor, lock, parent = executors.make_executor(args), None, None
    try:
        lock = grid.prepare_folder(plan)
        if tracked:  # The parent run first: the store is created once, before the children write to it.
            environment, parent = mlflow_log.start_sweep(plan.folder, plan.base.output.dir, plan.spec)
            executor.overrides.update(environment)
        where = (f"{plan.workers} worker(s)" if executor.name == "local" else
                 f"Ray tasks of {executor.cpus:g} CPU(s)" + (f" and {executor.gpus:g} GPU(s)" if executor.gpus else ""))
        print(f"Sweep of {len(plan.runs)} run(s) in {plan.folder} with {where}.", flush=True)
        try:
            statuses, walls = runner.run_all(plan, executor, TRAIN_SCRIPT)
        except KeyboardInterrupt:
            print("\nInterrupted. Run the same command again to resume.", file=sys.stderr)
            if parent is not None:
                parent.end({"status": "interrupted"}, plan.folder)
            return exits.EXIT_INTERRUPTED
        status = report(plan, statuses, walls)
        if parent is not None:
            mlflow_log.end_sweep(parent, plan.folder, status == 0)
        return status
    finally:
        executor.close()
        if lock is not None:
            lock.close()


def report(plan, statuses, walls):
    """Write the sweep's table, figures and page from its runs; returns 0, or EXIT_SWEEP_RUN_FAILED if a run failed."""
    from vae_kl.process import quiet  # The report loads the models: TensorFlow, its start-up lines off the console.

    tf_log = os.path.join(plan.folder, LOG_DIR, "tensorflow_startup.log")
    quiet.import_tensorflow(tf_log)
    import model
    from vae_kl.tracking import tensorboard_log

    if plan.base.output.tensorboard:
        tensorboard_log.write_sweep_hparams(plan.folder, dict(plan.grid))
    rows = result_rows(plan, statuses, walls)
    sections = [frontier.write_frontier(plan.folder, rows, plan.frontier)] if plan.frontier else []
    with quiet.quiet_stderr(tf_log):  # Keras prints loading warnings of its own through the same stream.
        summary = write_outputs(plan, rows, model.load, sections)
    print(summary)
    if plan.frontier:
        print(f"Frontier: {os.path.join(plan.folder, frontier.PAGE)} and {frontier.FIGURE}")
    print(f"Report: {os.path.join(plan.folder, 'report.html')}")
    return 0 if all(status == "complete" for status in statuses.values()) else exits.EXIT_SWEEP_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
