"""One grid of codes against two (VQ-VAE-2) on the demo, at equal bits per image and equal steps (issue 16).

    .venv/bin/vqgen pipeline --config configs/fashion-mnist.yaml --out runs/demo                  # ~20 min each
    .venv/bin/vqgen pipeline --config configs/fashion-mnist-2level.yaml --out runs/demo-2level
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.two_levels --one runs/demo --two runs/demo-2level

configs/fashion-mnist-2level.yaml is the demo (8x8 codes, K = 512: 64 x 9 = 576 bits per image) with 4x4
top codes of K = 256 over 8x8 bottom codes of K = 128 (16 x 8 + 64 x 7 = 576 bits), the same steps,
batch, sampling and evaluation. For each finished pipeline run:
- PSNR, SSIM, each level's codebook usage (target: >= 95 % on each) and perplexity over the first N val
  images, and rFID of their reconstructions against them (eval/recon.py; the originals' Inception
  statistics come from the statistics cache, so they are computed once for both runs);
- the code grids' bits per image: the sum over levels of h x w x log2 K;
- the prior's last val bits/token, in total and per level (RUN/prior/metrics.jsonl), and the bits per
  image it needs (each level's bits/token x its h x w);
- the end-to-end Inception FID, KID, precision and recall, and classifier FID, at the run's own
  protocol (RUN/metrics.json, written when the pipeline finished).
Prints one JSON line and writes bench/results/two_levels.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from bench.pipeline_run import pipeline_run_config
from core.errors import VqgenError
from core.runs import MetricsLog, read_json, write_json
from eval.cache import StatsCache
from eval.recon import rfid, tokenizer_metrics
from stage1_vqvae.load import load_tokenizer
from stage1_vqvae.model import LevelSpec, level_key
from vqgen.pipeline import PipelineConfig

RESULT = Path(__file__).parent / "results" / "two_levels.json"
RUN_PARTS = ("config.yaml", "metrics.json", "tokenizer/model", "prior/metrics.jsonl")
USAGE_TARGET = 95.0  # % of each level's codes used (issue 16)
# The end-to-end scores of a run's summary (vqgen/report.py), and the protocol they were measured at.
END_TO_END = ("inception_fid", "inception_kid_mean", "inception_kid_std", "inception_precision", "inception_recall",
              "inception_n_samples")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.two_levels", description=__doc__.splitlines()[0])
    parser.add_argument("--one", type=Path, required=True, help="a finished one-level `vqgen pipeline` run")
    parser.add_argument("--two", type=Path, required=True, help="a finished two-level `vqgen pipeline` run")
    parser.add_argument("--n", type=int, default=1000, help="val images for PSNR, SSIM, usage and rFID")
    return parser.parse_args(argv)


def run_config(run: Path) -> PipelineConfig:
    return pipeline_run_config(run, RUN_PARTS, "a finished pipeline run",
                               "pass the --out folder of a `vqgen pipeline` run that finished")


def code_bits(specs: list[LevelSpec]) -> dict[str, Any]:
    """Each level's grid, K and bits per image (h x w x log2 K), and their sum."""
    levels = {s.name: {"grid": f"{s.grid_h}x{s.grid_w}", "K": s.codebook_size,
                       "bits": round(s.grid_h * s.grid_w * math.log2(s.codebook_size), 2)} for s in specs}
    return {"levels": levels, "bits_per_image": round(sum(lv["bits"] for lv in levels.values()), 2)}


def prior_bits(run: Path, specs: list[LevelSpec]) -> dict[str, Any]:
    """The prior's last val bits/token, in total and per level, and the bits per image they add up to."""
    rows = [row for row in MetricsLog(run / "prior" / "metrics.jsonl").read() if "val/bits_per_token" in row]
    if not rows:
        raise VqgenError(f"{run / 'prior' / 'metrics.jsonl'}: no val/bits_per_token (a prior with an AR objective "
                         "logs it at each val pass); pass a run whose prior is a GPT or a PixelCNN")
    last = rows[-1]
    levels = {s.name: last[f"val/{level_key(s.name, 'bits_per_token')}"] for s in specs}
    per_image = sum(bits * s.grid_h * s.grid_w for bits, s in zip(levels.values(), specs))
    return {"val_bits_per_token": round(last["val/bits_per_token"], 4),
            "val_bits_per_token_per_level": {name: round(bits, 4) for name, bits in levels.items()},
            "val_bits_per_image": round(per_image, 2), "step": last["step"]}


def measure(run: Path, n: int, cache: StatsCache | None = None) -> dict[str, Any]:
    """Every figure of one run (see the module's docstring)."""
    cfg = run_config(run)
    tokenizer = load_tokenizer(run / "tokenizer" / "model")
    specs = tokenizer.config.level_specs
    scores = tokenizer_metrics(tokenizer, cfg.data, "val", n=n)
    usage = {s.name: round(scores[level_key(s.name, "usage")], 2) for s in specs}
    summary = read_json(run / "metrics.json", "the run's metrics")["summary"]
    return {
        "config": {"tokenizer_steps": cfg.tokenizer.train.steps, "prior_steps": cfg.prior.train.steps,
                   "prior_arch": cfg.prior.arch, "prior_preset": cfg.prior.preset},
        "codes": code_bits(specs),
        "val_psnr_db": round(scores["psnr"], 3), "val_ssim": round(scores["ssim"], 4), "val_n": scores["n_images"],
        "usage_pct": usage, "usage_target_met": all(u >= USAGE_TARGET for u in usage.values()),
        "perplexity": {s.name: round(scores[level_key(s.name, "perplexity")], 1) for s in specs},
        "rfid": round(rfid(tokenizer, cfg.data, n, cache=cache)["rfid"], 3),
        "prior": prior_bits(run, specs),
        "end_to_end": {key: summary.get(key) for key in END_TO_END}
        | {key: value for key, value in summary.items() if key.startswith("classifier FID")},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # One thread unless OMP_NUM_THREADS says otherwise (see bench/tokenizer.py).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started, load_before = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()[0]
    cache = StatsCache()  # the val originals' Inception statistics: computed for the first run, read for the second
    try:
        results = {name: {"run": str(run), **measure(run, args.n, cache)}
                   for name, run in (("one_level", args.one), ("two_levels", args.two))}
    except VqgenError as err:
        raise SystemExit(f"bench.two_levels: error: {err}") from None
    record = {"benchmark": "two_levels", "started": started, "rfid_psnr_ssim_usage_n": args.n, "results": results,
              "setup": {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "machine": platform.machine(), "load_avg_1min_before": round(load_before, 2),
                        "load_avg_1min_after": round(os.getloadavg()[0], 2)}}
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
