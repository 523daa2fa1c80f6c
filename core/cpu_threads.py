"""OpenMP's wait policy for CPU runs, set before torch loads its OpenMP runtime.

By default libgomp spins a waiting thread for about 300,000 iterations before it sleeps. On an idle
machine that saves a wake-up per parallel region; beside another busy process it burns the time
slice the other process's threads need: two 2-thread runs on 2 cores slowed to 0.05-0.2x of one
(bench/busy_machine.py, BENCHMARKS.md "CPU runs on a busy machine"). A passive policy lets a waiting
thread yield at once: each twin keeps about half its idle speed, for about 16 % off the idle speed
(GOMP_SPINCOUNT=1000 kept 10 % more idle speed but fell short beside a busy loop). libgomp reads these variables only when it is loaded, so they must be in the environment
before the first `import torch`; `vqgen.cli.main` calls this first thing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

# The user's own choice of any of these wins: we set nothing when one is present.
USER_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_cpu_threads(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set POLICY in `environ` unless the user set a wait policy; return what was set.

    Does nothing once torch is imported: its OpenMP runtime has already read the environment.
    Child processes (data-loader workers, `accelerate launch` ranks) inherit the setting.
    """
    if "torch" in sys.modules or any(knob in environ for knob in USER_KNOBS):
        return {}
    environ.update(POLICY)
    return dict(POLICY)
