"""Training a sweep's runs: the ones not finished yet, through an executor, with a line whenever one starts
or ends; a run folder another process holds is waited for, never trained twice at once.
"""

import concurrent.futures
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Optional, Union

from vae_kl.process import (
    atomic,
    exits,
)
from vae_kl.runs import folders, locks
from vae_kl.sweeps import grid

if TYPE_CHECKING:
    from vae_kl.sweeps.executors import LocalExecutor, RayExecutor

OWNER_WAIT_SECONDS = 60  # How long a run folder another live process holds is waited for.


def clear_stillborn(run_dir: str) -> None:
    """Remove a run folder train.py was killed in before it wrote summary.json: it holds no results,
    and train.py would leave it alone and train into '<label>-2' instead. A folder a live process
    holds is being set up, not stillborn."""
    if os.path.isdir(run_dir) and folders.run_status(run_dir) is None and \
            not os.path.isdir(os.path.join(run_dir, folders.STATE_DIR)) and locks.lock_holder(run_dir) is None:
        shutil.rmtree(run_dir)


def wait_for_owner(run_dir: str) -> Optional[str]:
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


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def train_one(plan: grid.Plan, run: grid.Run, executor: Union["LocalExecutor", "RayExecutor"], progress: Progress,
              train_script: str) -> tuple[str, float]:
    """Run train.py for one setting through the executor, its output appended to logs/<label>.log.
    Returns (status, seconds)."""
    run_dir = os.path.join(plan.folder, run.label)
    owner = wait_for_owner(run_dir)
    if owner is not None:  # Never train the same setting twice at once, nor into '<label>-2'.
        print(f"busy {run.label}: process {owner} is still training it; run the sweep again when it ends.",
              flush=True)
        return "busy", 0.0
    clear_stillborn(run_dir)
    command = [sys.executable, train_script, "--config", grid.config_path(plan, run)]
    progress.started(run.label)
    begin = time.monotonic()
    code = executor.run(command, grid.log_path(plan, run))
    seconds = time.monotonic() - begin
    status = folders.run_status(run_dir)  # summary.json is the authority; the exit code only fills gaps.
    if status not in folders.FINAL_STATUSES:
        status = "interrupted" if code == exits.EXIT_INTERRUPTED else "failed"
    progress.ended(run.label, status, seconds)
    return status, seconds


def finished_futures(futures: Iterable[concurrent.futures.Future],
                     poll_seconds: float = 0.5) -> Iterator[concurrent.futures.Future]:
    """as_completed, waking every poll_seconds: a Ctrl-C that lands on another thread (Ray's, a pool's)
    only sets Python's flag, which the main thread acts on when it runs, not while blocked in a wait."""
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(pending, timeout=poll_seconds,
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        yield from done


def run_all(plan: grid.Plan, executor: Union["LocalExecutor", "RayExecutor"],
            train_script: str) -> tuple[dict[str, str], dict[str, float]]:
    """Train the runs that are not finished yet, each as `python train_script --config <its config>`, through the
    executor (executors.LocalExecutor or RayExecutor). Returns ({label: status}, {label: wall seconds})."""
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
        futures = {pool.submit(train_one, plan, run, executor, progress, train_script): run for run in todo}
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
