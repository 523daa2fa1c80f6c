"""The OpenMP wait policy is set before torch loads, and never over the user's own choice."""

import json
import os
import subprocess
import sys

import pytest

from core.cpu_threads import POLICY, USER_KNOBS, LoadFollower

PROBE = """
import json, os
from vqgen import cli
try:
    cli.main({argv!r})
except SystemExit:
    pass
import torch  # loads libgomp, which reads the environment now
print(json.dumps({{k: os.environ.get(k) for k in {knobs!r}}}))
"""


def _knobs_after_cli(env_extra: dict[str, str], argv: list[str]) -> dict[str, str | None]:
    env = {k: v for k, v in os.environ.items() if k not in USER_KNOBS} | env_extra
    code = PROBE.format(argv=argv, knobs=list(USER_KNOBS))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cli_sets_the_policy_before_torch_loads():
    knobs = _knobs_after_cli({}, ["--version"])
    assert {k: v for k, v in knobs.items() if v is not None} == POLICY


@pytest.mark.parametrize("knob", USER_KNOBS)
def test_a_users_own_wait_setting_is_left_alone(knob):
    knobs = _knobs_after_cli({knob: "123"}, ["--version"])
    assert {k: v for k, v in knobs.items() if v is not None} == {knob: "123"}


def test_nothing_is_set_once_torch_is_loaded():
    code = ("import os, torch; from core.cpu_threads import configure_cpu_threads as c; "
            "print(c(), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in USER_KNOBS}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["{}", "None"]


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
