"""VQ, FSQ and LFQ as the demo's tokenizer: reconstruction, code use and how well the prior models
their codes, at equal training steps and near-equal K.

    nohup env OMP_NUM_THREADS=1 .venv/bin/python -m bench.tokenizer_quantizers > /tmp/vq/quantizers_bench.log 2>&1 &
    .venv/bin/python -m bench.tokenizer_quantizers --steps 20 --prior-steps 20 --rfid-n 50   # a quick trial

Each tokenizer is the demo's (configs/fashion-mnist.yaml: preset small, Fashion-MNIST 32 px, factor 4
-> 8x8 codes, D = 64, 600 steps at batch 64) with only `model.quantizer` changed: VQ with K = 1,024,
FSQ [8, 5, 5, 5] (K = 1,000) and LFQ with 10 bits (K = 1,024), each kind's other settings at their
defaults. For each:
- val PSNR, SSIM, codebook usage (% of K used) and perplexity over the whole val split (3,000 images);
- rFID of the reconstructions of the first 1,000 val images (Inception, as `vqgen reconstruct`);
- the demo prior (GPT preset demo, 1,500 steps, configs/fashion-mnist.yaml) trained on its code
  grids: its final val bits/token, and the unigram entropy of the codes for scale.
The runs live in a temporary folder. Prints one JSON line and writes
bench/results/tokenizer_quantizers.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from core.config import load_config
from core.runs import MetricsLog, write_json
from eval.recon import rfid, tokenizer_metrics
from stage1_vqvae.codes import dump_codes
from stage1_vqvae.load import load_tokenizer
from stage1_vqvae.train import train_tokenizer
from stage2_prior.train import train_prior
from vqgen.pipeline import PipelineConfig

CONFIG = "configs/fashion-mnist.yaml"
QUANTIZERS = {
    "vq": {"kind": "vq", "codebook_size": 1024},
    "fsq": {"kind": "fsq", "levels": [8, 5, 5, 5]},
    "lfq": {"kind": "lfq", "bits": 10},
}
RESULT = Path(__file__).parent / "results" / "tokenizer_quantizers.json"
logger = logging.getLogger("bench.tokenizer_quantizers")


def with_steps(train, steps: int | None):
    """A TrainConfig with `steps` (None: unchanged), evaluated and saved at the end only."""
    steps = steps or train.steps
    return dataclasses.replace(train, steps=steps, eval_every=steps, save_every=steps)


def last(path: Path, key: str) -> float:
    return [row for row in MetricsLog(path).read() if key in row][-1][key]


def measure(name: str, quantizer: dict, cfg: PipelineConfig, root: Path, args: argparse.Namespace) -> dict:
    tokenizer_cfg = dataclasses.replace(cfg.tokenizer, model={"quantizer": quantizer},
                                        train=with_steps(cfg.tokenizer.train, args.steps))
    start = time.perf_counter()
    tokenizer_dir = train_tokenizer(tokenizer_cfg, root / name / "tokenizer")
    tokenizer_s = time.perf_counter() - start
    model = load_tokenizer(tokenizer_dir)
    logger.info("%s: tokenizer trained in %.0f s; scoring the val split", name, tokenizer_s)
    scores = tokenizer_metrics(model, cfg.data, "val")
    fid = rfid(model, cfg.data, args.rfid_n)
    codes = dump_codes(tokenizer_dir, cfg.data, root / name / "codes")
    logger.info("%s: codes dumped; training the prior", name)
    prior_cfg = dataclasses.replace(cfg.prior, codes=str(codes), train=with_steps(cfg.prior.train, args.prior_steps))
    start = time.perf_counter()
    train_prior(prior_cfg, root / name / "prior")
    prior_log = root / name / "prior" / "metrics.jsonl"
    return {
        "quantizer": model.config.quantizer, "K": model.config.codebook_size,
        "val_psnr_db": round(scores["psnr"], 3), "val_ssim": round(scores["ssim"], 4),
        "val_usage_pct": round(scores["usage"], 2), "val_perplexity": round(scores["perplexity"], 1),
        "rfid": round(fid["rfid"], 3), "rfid_n": fid["rfid_n"],
        "prior_val_bits_per_token": round(last(prior_log, "val/bits_per_token"), 4),
        "codes_unigram_bits": round(last(prior_log, "val/unigram_bits"), 4),
        "tokenizer_s": round(tokenizer_s, 1), "prior_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="tokenizer steps (default: the demo's 600)")
    parser.add_argument("--prior-steps", type=int, help="prior steps (default: the demo's 1,500)")
    parser.add_argument("--rfid-n", type=int, default=1000, help="val images for rFID")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load_config(PipelineConfig, CONFIG)
    load_before, started = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: measure(name, quantizer, cfg, Path(tmp), args) for name, quantizer in QUANTIZERS.items()}
    record = {
        "benchmark": "tokenizer_quantizers", "started": started, "config": CONFIG,
        "setup": {"tokenizer_steps": args.steps or cfg.tokenizer.train.steps,
                  "prior_steps": args.prior_steps or cfg.prior.train.steps, "rfid_n": args.rfid_n,
                  "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
                  "machine": platform.machine()},
        "results": results,
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
