"""What a tokenizer step with VQGAN's adversarial terms costs against an MSE step (issue 13: does the
demo's time budget hold the adversarial loss?).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.vqgan_step [--repeats 3]

The demo's tokenizer (`small` preset, Fashion-MNIST 32 px, batch 64) trained for a short and a long
run with each loss, alternated, the discriminator on from step 0: the difference between the two runs
is the cost of (long - short) steps without the start-up and the final evaluation. The adversarial
loss is configs/fashion-mnist-vqgan.yaml's (hinge PatchGAN, 32 channels, 2 layers, eq. 7's adaptive
weight, feature matching). Prints one JSON line and writes bench/results/vqgan_step.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from core.config import load_config
from core.runs import write_json
from stage1_vqvae.losses import LossConfig
from stage1_vqvae.train import TokenizerRunConfig, train_tokenizer
from vqgen.pipeline import PipelineConfig

RESULT = Path(__file__).parent / "results" / "vqgan_step.json"
SHORT, LONG = 20, 60


def run_config(loss: LossConfig, steps: int) -> TokenizerRunConfig:
    demo = load_config(PipelineConfig, Path("configs/fashion-mnist.yaml")).tokenizer
    never = 10**6  # no evaluation or checkpoint inside the timed steps
    train = dataclasses.replace(demo.train, steps=steps, eval_every=never, save_every=never, log_every=never,
                                eval_batches=1)
    return dataclasses.replace(demo, loss=loss, train=train)


def seconds_per_step(loss: LossConfig) -> float:
    times = {}
    for steps in (SHORT, LONG):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train_tokenizer(run_config(loss, steps), Path(tmp) / "run")
            times[steps] = time.perf_counter() - start
    return (times[LONG] - times[SHORT]) / (LONG - SHORT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    vqgan = load_config(PipelineConfig, Path("configs/fashion-mnist-vqgan.yaml")).tokenizer.loss
    adversarial = LossConfig(adversarial=dataclasses.replace(vqgan.adversarial, start=0))
    load_start = os.getloadavg()[0]
    mse, gan = [], []
    for _ in range(args.repeats):  # alternated, so both see the same load
        mse.append(seconds_per_step(LossConfig()))
        gan.append(seconds_per_step(adversarial))
    ratios = [g / m for g, m in zip(gan, mse)]
    record = {"benchmark": "vqgan_step", "date": time.strftime("%Y-%m-%d %H:%M"), "threads": torch.get_num_threads(),
              "steps_timed": LONG - SHORT, "repeats": args.repeats, "mse_s_per_step": [round(t, 4) for t in mse],
              "vqgan_s_per_step": [round(t, 4) for t in gan], "ratios": [round(r, 3) for r in ratios],
              "median_ratio": round(statistics.median(ratios), 3), "load_avg_1min": [round(load_start, 2),
                                                                                    round(os.getloadavg()[0], 2)]}
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
