"""VQGAN's adversarial terms against VQ-VAE's loss alone, at equal steps (issue 13).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.vqgan [--steps 3000] [--rfid-n 1000]

Fashion-MNIST at 32 px, the `small` tokenizer (8x8 codes, K = 512), batch 64, one seed and one data order
for every variant:

    mse               pixel MSE + commitment: the demo's tokenizer loss
    adversarial       + the hinge PatchGAN term from step steps/3 on, weighted by VQGAN eq. 7 x 0.5
    adversarial+fm    + pix2pixHD's discriminator feature matching (weight 0.1)

For each: val PSNR, SSIM and codebook usage over the whole val split; rFID of the reconstructions of the
first N val images against those images (eval/recon.rfid, the same Inception reference for all: its
statistics are computed once); the classifier FID of the same reconstructions against the same
originals (a Fashion-MNIST CNN trained once, eval/classifier.py); the training wall time. Not part of
`make bench` (about 2 hours on 2 cores). Prints one JSON line and writes bench/results/vqgan.json,
rewritten after each variant so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from core.data import load_images
from core.runs import write_json
from eval.cache import StatsCache
from eval.classifier import ClassifierRunConfig, load_classifier, train_classifier
from eval.classifier_fid import classifier_outputs
from eval.data_stats import data_batches
from eval.recon import reconstructions, rfid, tokenizer_metrics
from eval.scores import frechet_distance, stats_of
from stage1_vqvae.load import load_tokenizer
from stage1_vqvae.losses import AdversarialConfig, LossConfig
from stage1_vqvae.train import TokenizerRunConfig, train_tokenizer

RESULT = Path(__file__).parent / "results" / "vqgan.json"


def variants(steps: int) -> dict[str, LossConfig]:
    adversarial = AdversarialConfig(weight=0.5, start=steps // 3, loss="hinge", discriminator_channels=32,
                                    discriminator_layers=2, lr=2e-4)
    return {
        "mse": LossConfig(),
        "adversarial": LossConfig(adversarial=adversarial),
        "adversarial+fm": LossConfig(adversarial=dataclasses.replace(adversarial, feature_matching_weight=0.1)),
    }


def tokenizer_config(loss: LossConfig, steps: int) -> TokenizerRunConfig:
    cfg = TokenizerRunConfig(loss=loss)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps, eval_every=steps,
                                                              save_every=steps, log_every=50))


def classifier_rfid(classifier, tokenizer, dataset, n: int) -> float:
    """rFID's protocol on the classifier's features: reconstructions of the first n images against them."""
    real, _ = classifier_outputs(classifier, data_batches(dataset, n), "val images")
    fake, _ = classifier_outputs(classifier, reconstructions(tokenizer, dataset, n), "reconstructions")
    return frechet_distance(stats_of(real, {"n": len(real)}), fake)


def measure(name: str, loss: LossConfig, steps: int, rfid_n: int, work: Path, classifier, cache: StatsCache) -> dict:
    cfg = tokenizer_config(loss, steps)
    start = time.perf_counter()
    train_tokenizer(cfg, work / name)
    wall = time.perf_counter() - start
    tokenizer = load_tokenizer(work / name)
    val = tokenizer_metrics(tokenizer, cfg.data, "val")
    scores = rfid(tokenizer, cfg.data, rfid_n, cache=cache)
    val_set = load_images(cfg.data, "val")
    return {
        "train_wall_s": round(wall, 1), "val_psnr_db": round(val["psnr"], 3), "val_ssim": round(val["ssim"], 4),
        "val_usage_pct": round(val["usage"], 2), "rfid": round(scores["rfid"], 3), "rfid_n": scores["rfid_n"],
        "classifier_rfid": round(classifier_rfid(classifier, tokenizer, val_set, rfid_n), 4),
        "loss": dataclasses.asdict(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rfid-n", type=int, default=1000)
    args = parser.parse_args()
    # One thread unless OMP_NUM_THREADS says otherwise (see bench/tokenizer.py).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    record = {
        "benchmark": "vqgan",
        "setup": {"data": "fashion-mnist 32px", "tokenizer": "preset small: 8x8 codes, K=512", "batch_size": 64,
                  "steps": args.steps, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                  "torch": torch.__version__, "machine": platform.machine(),
                  "date": time.strftime("%Y-%m-%d %H:%M"), "load_avg_1min_start": round(os.getloadavg()[0], 2)},
        "result": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        classifier = load_classifier(train_classifier(ClassifierRunConfig(), work / "classifier"))
        cache = StatsCache(work / "cache")  # one Inception reference for every variant
        for name, loss in variants(args.steps).items():
            record["result"][name] = measure(name, loss, args.steps, args.rfid_n, work, classifier, cache)
            write_json(RESULT, record)
    mse, adversarial = record["result"]["mse"]["rfid"], min(r["rfid"] for k, r in record["result"].items() if k != "mse")
    record["best_adversarial_rfid_over_mse"] = round(adversarial / mse, 3)
    record["setup"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
