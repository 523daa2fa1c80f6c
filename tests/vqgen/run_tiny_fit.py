"""Trains the tiny task into argv[1]; run by test_loop under 1 and 2 processes, and under bf16."""

import dataclasses
import sys

from tiny_task import TinyTask

from vqgen.loop import TrainConfig, fit


class NoDropoutTask(TinyTask):
    # Dropout draws differ per process, so the 1-vs-2 process comparison trains without it.
    def __init__(self):
        super().__init__()
        self.model.net[1].p = 0.0

    def training_step(self, model, batch):
        return {"loss": super().training_step(model, batch)["loss"]}


CFG = TrainConfig(steps=8, batch_size=16, lr=1e-2, warmup_steps=2, eval_every=4, save_every=4, log_every=1)

if __name__ == "__main__":
    # argv[2], if given, is the mixed precision (Accelerate allows only one per process).
    precision = sys.argv[2] if len(sys.argv) > 2 else "no"
    fit(NoDropoutTask(), dataclasses.replace(CFG, mixed_precision=precision), sys.argv[1])
