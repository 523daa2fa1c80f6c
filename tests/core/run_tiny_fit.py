"""Trains the tiny task into OUT, like a vqgen command: a VqgenError is one line on stderr and exit code 1.

Run by the tests under 1 and 2 processes, under bf16, and under a file-size limit; with --critic-start, the
task trains a critic beside the model from that step on; --log-with names trackers (train.log_with).
"""

import argparse
import dataclasses
import os
import signal
import sys

from tiny_task import AdversarialTask, TinyTask

from core.errors import VqgenError
from core.loop import TrainConfig, fit


class ScriptTask(TinyTask):
    """Without dropout by default: its draws differ per process, so the 1-vs-2 process comparison trains
    without it; and without the metric that draws noise."""

    def __init__(self, sigkill_at_call: int = -1, dim: int = 4, dropout: float = 0.0):
        super().__init__(dim=dim)
        self.model.net[1].p = dropout
        self.sigkill_at_call = sigkill_at_call

    def training_step(self, model, batch):
        if self.calls + 1 == self.sigkill_at_call:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no handler, no cleanup runs
        return {"loss": super().training_step(model, batch)["loss"]}


class ScriptAdversarialTask(AdversarialTask):
    """The same, with a critic: without dropout and without the metric that draws noise."""

    def __init__(self, start: int):
        super().__init__(start=start)
        self.model.net[1].p = 0.0

    def training_step(self, model, batch, info):
        return {k: v for k, v in super().training_step(model, batch, info).items() if k != "noise"}


CFG = TrainConfig(steps=8, batch_size=16, lr=1e-2, warmup_steps=2, eval_every=4, save_every=4, log_every=1)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("precision", nargs="?", default="no")  # Accelerate allows one per process
    parser.add_argument("--steps", type=int, default=CFG.steps)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sigkill-at-call", type=int, default=-1)
    parser.add_argument("--dim", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--critic-start", type=int, default=-1)
    parser.add_argument("--log-with", nargs="*", default=[])
    args = parser.parse_args()
    try:
        cfg = dataclasses.replace(CFG, mixed_precision=args.precision, steps=args.steps, log_with=args.log_with)
        task = (ScriptAdversarialTask(args.critic_start) if args.critic_start >= 0
                else ScriptTask(args.sigkill_at_call, args.dim, args.dropout))
        fit(task, cfg, args.out, resume=args.resume)
    except VqgenError as err:
        sys.exit(f"run_tiny_fit: error: {err}")
