"""The thread count follows the other processes' load, and never overrides the user's own."""

import json
import os
import subprocess
import sys

import pytest

from core.cpu_threads import LoadFollower

FOLLOW = """
import json, os, signal, subprocess, sys, time
import torch
from core.cpu_threads import LoadFollower
torch.set_num_threads(2)
follower = LoadFollower(every_s=0.5)
# A spinning process that is not ours: started by a child that exits at once (a child of ours
# would count as our own data-loader worker).
spawn = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'while True: pass'], "
         "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
pid = int(subprocess.run([sys.executable, '-c', spawn], capture_output=True, text=True).stdout)
seen = []
try:
    end = time.monotonic() + 3
    while time.monotonic() < end:
        time.sleep(0.1)
        follower.follow()
        seen.append(torch.get_num_threads())
finally:
    os.kill(pid, signal.SIGKILL)
print(json.dumps({"enabled": follower.enabled, "threads": seen[-1]}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to give one back")
def test_a_busy_process_beside_the_run_takes_a_thread_away():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", FOLLOW], env=env, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"enabled": True, "threads": 1}


@pytest.mark.parametrize(("others", "threads"), [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (3.5, 1)])
def test_one_thread_per_core_the_others_leave_free(others, threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    follower = LoadFollower()
    follower.most, follower.cores = 2, 2
    assert follower.threads_for(others) == threads


def test_a_users_own_thread_count_is_never_changed(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    try:
        assert not LoadFollower().enabled
    finally:
        torch.set_num_threads(1)
