"""The OpenMP wait policy is set before torch loads, and never over the user's own choice."""

import json
import os
import subprocess
import sys

import pytest

from core.cpu_threads import POLICY, USER_KNOBS

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
