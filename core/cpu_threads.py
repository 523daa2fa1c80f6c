"""CPU threads that share the machine: torch's thread count follows the other processes' load.

By default libgomp, torch's OpenMP runtime, spins a waiting thread for about 300,000 iterations before
it sleeps. On an idle machine that saves a wake-up per parallel region; beside another busy process it
burns the time slice the other process's threads need: two 2-thread runs on 2 cores slowed to
0.05-0.2x of one (bench/busy_machine.py, BENCHMARKS.md "CPU runs on a busy machine"). A passive wait
policy (yield at once) fixed that at 16 % of the idle speed, a short spin (GOMP_SPINCOUNT=10000) at
4 %. `LoadFollower` costs nothing idle: it lowers the thread count while other processes keep cores
busy (a run with one thread per free core never waits for a descheduled thread) and raises it again
when they stop. The loops that run long call it: training (`core.loop`), sampling, encoding codes and
Inception passes. libgomp's own settings are left as they are.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import MutableMapping

import psutil
import torch

# A thread count of the user's own is never changed.
USER_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

logger = logging.getLogger(__name__)


class LoadFollower:
    """Keeps torch's thread count at the cores other processes leave free, between 1 and the count
    it started with. Call `follow()` from the thread that runs the model (OpenMP's thread count
    belongs to the calling thread) as often as you like: it looks at the load every `every_s`.

    Other processes' load is the machine's busy CPU time minus this process's own and its
    children's (data-loader workers), over the last interval, in cores.
    """

    def __init__(self, device_type: str = "cpu", every_s: float = 1.0, environ: MutableMapping[str, str] = os.environ):
        self.most = torch.get_num_threads()
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # A GPU run's CPU threads only feed the GPU: nothing to share.
        self.enabled = device_type == "cpu" and self.most > 1 and not any(knob in environ for knob in USER_THREADS)
        self.every_s = every_s
        self.me = psutil.Process()
        self.last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        """(wall time, the machine's busy CPU seconds, this process tree's CPU seconds)."""
        machine = psutil.cpu_times()
        # Linux counts guest (VM) time inside user and nice as well: subtract it once.
        not_busy = ("idle", "iowait", "guest", "guest_nice")
        busy = sum(machine) - sum(getattr(machine, field, 0.0) for field in not_busy)
        own = 0.0
        for process in (self.me, *self.me.children(recursive=True)):
            try:
                times = process.cpu_times()
            except psutil.Error:  # a worker that exited between the listing and the read
                continue
            own += times.user + times.system
        return time.monotonic(), busy, own

    def others_load(self) -> float | None:
        """Cores kept busy by other processes since the last look; None before `every_s` passed."""
        now = self._sample()
        wall = now[0] - self.last[0]
        if wall < self.every_s:
            return None
        others = ((now[1] - self.last[1]) - (now[2] - self.last[2])) / wall
        self.last = now
        return max(others, 0.0)

    def threads_for(self, others: float) -> int:
        """One thread per core the others leave free; a core more than half busy is taken."""
        return max(1, min(self.most, self.cores - int(others + 0.5)))

    def follow(self) -> None:
        if not self.enabled:
            return
        others = self.others_load()
        if others is None:
            return
        threads = self.threads_for(others)
        if threads != torch.get_num_threads():
            logger.debug("other processes keep %.1f cores busy: %d threads", others, threads)
            torch.set_num_threads(threads)
