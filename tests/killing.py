"""A training run stopped in the middle, as a SIGKILL stops it: for the resume tests of the loop and of
each stage. Put `tests/` on sys.path to import it (the test folders are not packages)."""

from __future__ import annotations

from typing import Any


class Killed(Exception):
    """Stands for a SIGKILL in the middle of a run."""


class KillAtCall:
    """Mixed in before a TrainTask (`class KilledTask(KillAtCall, TokenizerTask)`): counts the calls of
    `training_step` in `calls` and raises Killed on call number `kill_at_call` (counted from 1; -1: never)."""

    def __init__(self, *args: Any, kill_at_call: int = -1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.calls, self.kill_at_call = 0, kill_at_call

    def training_step(self, model, batch, *info):  # info: the StepInfo of a task with several networks
        self.calls += 1
        if self.calls == self.kill_at_call:
            raise Killed
        return super().training_step(model, batch, *info)
