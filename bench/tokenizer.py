"""The default Fashion-MNIST tokenizer (what the demo trains): wall time and val quality.

    .venv/bin/python -m bench.tokenizer [--steps N]

Trains `TokenizerRunConfig()` (preset "small": 32x32 -> 8x8 codes, K=512) through the same
`train_tokenizer` the CLI calls, then reads the final val metrics from metrics.jsonl: codebook usage
over the whole val split (%), PSNR and SSIM. Also records the machine load average, since the wall
time depends on what else runs on the CPU. Prints one JSON line and writes
bench/results/tokenizer.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.runs import MetricsLog, write_json
from stage1_vqvae.train import TokenizerRunConfig, train_tokenizer

RESULT = Path(__file__).parent / "results" / "tokenizer.json"


def measure(steps: int | None = None) -> dict:
    cfg = TokenizerRunConfig()
    if steps:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps, eval_every=steps))
    with tempfile.TemporaryDirectory() as tmp:
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        train_tokenizer(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - start
        rows = MetricsLog(Path(tmp) / "run" / "metrics.jsonl").read()
    val = [r for r in rows if "val/usage" in r][-1]
    train_only = [r for r in rows if "train/loss" in r][-1]["elapsed_s"]
    return {
        "train_wall_s": round(wall, 1), "train_loop_s": train_only,
        "val_usage_pct": round(val["val/usage"], 2), "val_psnr_db": round(val["val/psnr"], 2),
        "val_ssim": round(val["val/ssim"], 4), "val_perplexity": round(val["val/perplexity"], 1),
        "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    # One thread unless OMP_NUM_THREADS says otherwise: on a shared CPU, OpenMP threads that spin
    # against other processes made a step 10x slower (0.69 s vs 8.2 s at load average 11 on 2 cores).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else None
    record = {
        "benchmark": "tokenizer",
        "setup": {"config": "TokenizerRunConfig() (preset small, fashion-mnist 32px, factor 4, K=512)",
                  "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
                  "machine": platform.machine()},
        "result": measure(steps),
    }
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
