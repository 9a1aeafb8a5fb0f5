"""The local Ray instance of `sweep.py --backend ray` ends with the sweep, however the sweep ends (SIGKILL too)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytest.importorskip("ray")  # .ci/run installs it (requirements-cluster.txt).


def group_members(pgid):
    """The pids of live processes in process group pgid (from /proc; Linux)."""
    members = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp: a zombie is already gone.
            members.append(int(name))
    return members


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process groups from /proc")
def test_a_sigkilled_sweep_leaves_no_ray_process_behind():
    # The "sweep": a process that starts the local instance, connects to it as sweep.py does, says where its
    # processes are, and waits to be killed.
    script = ("import os, sys; sys.path.insert(0, {root!r}); import secrets\n"
              "os.environ.update(RAY_AUTH_MODE='token', RAY_AUTH_TOKEN=secrets.token_hex(32))\n"
              "import ray, sweep\n"
              "head = sweep.LocalRayHead(1)\n"
              "ray.init(address=head.address, include_dashboard=False, log_to_driver=False)\n"
              "print(os.getpgid(head.keeper.pid), flush=True); sys.stdin.read()\n").format(root=ROOT)
    driver = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, RAY_KEEPER_GRACE="2"))
    pgid = None
    try:
        pgid = int(driver.stdout.readline())
        # Ray's head, its raylet and their agents (the processes ray.init's own instance leaves alive).
        assert len(group_members(pgid)) >= 4
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 30
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(pgid) == []
    finally:
        driver.kill()
        if pgid and group_members(pgid):  # Whatever a failure left, so that the rest of the suite runs.
            os.killpg(pgid, signal.SIGKILL)
