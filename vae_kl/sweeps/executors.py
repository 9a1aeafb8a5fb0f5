"""Where a sweep's runs train: as train.py children of the sweep (local), or as Ray tasks on this machine or a
cluster (ray; requirements-cluster.txt). Both run each train.py through train_process, with its share of the
CPU threads, and stop it resumably when the sweep is interrupted or dies.
"""

import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from types import ModuleType
from typing import TYPE_CHECKING, Optional, Union

from vae_kl.process import (
    exits,
    signals,
)
from vae_kl.spec import config

if TYPE_CHECKING:
    import argparse

ADDRESS_PROBE_SECONDS = 5.0  # How long a --address must take to accept a connection before it is refused.
RAY_START_SECONDS, RAY_STOP_SECONDS = 60.0, 15.0  # Bounds on starting and on stopping the local Ray instance.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
STOP_WAIT_SECONDS = 60  # How long an interrupted train.py may take to save its state before it is killed.
PARENT_PID_VARIABLE = signals.PARENT_PID_VARIABLE  # A plain string here, so a Ray task carries it by value.
BACKENDS = ("local", "ray")
CLUSTER_REQUIREMENTS = "requirements-cluster.txt"


def threads_per_run(workers: int) -> int:
    """Each run's share of this machine's cores when `workers` runs train at once."""
    return max(1, signals.available_cores() // workers)


def thread_overrides(threads: float) -> dict[str, str]:
    """The environment variables that hold one train.py to `threads` CPU threads.

    TensorFlow reads TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS when it creates its
    thread pools (checked on TF 2.21); OMP_NUM_THREADS covers oneDNN's OpenMP pool.
    """
    return {name: str(max(1, int(threads))) for name in THREAD_VARIABLES}


def train_process(command: list[str], log_file: str, overrides: dict[str, str],
                  stop_wait: float = STOP_WAIT_SECONDS) -> int:
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


def make_executor(args: "argparse.Namespace") -> Union[LocalExecutor, RayExecutor]:
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

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers need not import this package.
    except (ImportError, AttributeError, ValueError):
        pass  # An older cloudpickle: the workers import this module by name (the project is on their path).
    cpus = args.cpus_per_run if args.cpus_per_run is not None else threads_per_run(args.workers)
    if args.address:
        check_answers(args.address)
    head = None if args.address else LocalRayHead(signals.available_cores())
    try:
        try:
            # logging_level: Ray's own INFO lines ("Connecting to existing Ray cluster ...") stay off the console.
            ray.init(address=args.address or head.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
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


def check_answers(address: str, seconds: float = ADDRESS_PROBE_SECONDS) -> None:
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


def unanswered(host: str, port: int, seconds: float) -> Optional[OSError]:
    """None when something accepts a connection at host:port within `seconds`, else the OSError saying why not."""
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except OSError as error:
        return error
    return None


def check_resources(ray: ModuleType, cpus: float, gpus: float) -> None:
    """Refuse a run that asks for more CPUs or GPUs than the whole cluster has: Ray would queue it forever."""
    total = ray.cluster_resources()
    for kind, asked, option in (("CPU", cpus, "--cpus-per-run"), ("GPU", gpus, "--gpus-per-run")):
        if asked > total.get(kind, 0):
            ray.shutdown()
            raise config.ConfigError(f"{option} {asked:g} asks for more {kind}s than the Ray cluster has "
                                     f"({total.get(kind, 0):g}), so no run could ever start; lower {option}.")
