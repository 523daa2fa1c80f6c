"""The demo prior on the Fashion-MNIST demo codes: wall time and bits/token against the unigram baseline.

    .venv/bin/python -m bench.prior_demo [CODES] [OUT]     # defaults: runs/demo/codes, runs/bench-prior-demo

CODES is a code-grid folder written by `vqgen dump-codes` (the `make demo` pipeline writes one).
Trains the `demo` GPT preset with the settings below from scratch, then reads the final evaluation
from OUT/metrics.jsonl. `val/unigram_bits` is the entropy of the training codes' unigram
distribution: the bits/token of a model that ignores all context.

Prints one JSON line and writes it to bench/results/prior_demo.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from stage2_prior.train import PriorRunConfig, prior_train_defaults, train_prior
from vqgen.errors import VqgenError
from vqgen.runs import MetricsLog, write_json

RESULT = Path(__file__).parent / "results" / "prior_demo.json"
STEPS, BATCH, LR = 1500, 64, 1e-3


def main() -> None:
    found = [p for p in (Path("runs/demo/codes"), Path("runs/bench-demo/codes")) if p.is_dir()]
    codes = Path(sys.argv[1]) if len(sys.argv) > 1 else (found or [Path("runs/demo/codes")])[0]
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/bench-prior-demo")
    if not (codes / "vqgen_codes.json").is_file():
        raise VqgenError(f"{codes}: no code grids; run `make demo` or `vqgen dump-codes` first, or pass CODES")
    shutil.rmtree(out, ignore_errors=True)
    train = prior_train_defaults()
    train.steps, train.batch_size, train.lr, train.eval_every, train.save_every = STEPS, BATCH, LR, STEPS, STEPS
    cfg = PriorRunConfig(codes=str(codes), arch="gpt", preset="demo", train=train)
    start = time.perf_counter()
    train_prior(cfg, out)
    wall = time.perf_counter() - start
    final = [r for r in MetricsLog(out / "metrics.jsonl").read() if "val/bits_per_token" in r][-1]
    record = {
        "benchmark": "prior_demo", "codes": str(codes), "preset": "demo", "arch": "gpt", "steps": STEPS,
        "batch_size": BATCH, "lr": LR, "threads": torch.get_num_threads(), "wall_s": round(wall, 1),
        **{k: round(v, 4) for k, v in final.items() if k.startswith("val/")},
    }
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
