"""Trains the tiny task into argv[1]; run by test_loop under 1 and 2 processes."""

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


if __name__ == "__main__":
    fit(NoDropoutTask(), TrainConfig(steps=8, batch_size=16, lr=1e-2, warmup_steps=2, eval_every=4, save_every=4,
                                     log_every=1), sys.argv[1])
