"""Tokenizer metrics: PSNR, SSIM and codebook usage over a split, and rFID of its reconstructions.

rFID (as in LlamaGen's tokenizer tables) is the FID of reconstructed val images against the same
val images, with the standard Inception network (eval/inception.py). The originals' statistics are
those of any data split, so they come from the statistics cache (eval/cache.py) when it is given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from core.data import DataConfig, ImageDataset, load_images
from core.errors import VqgenError
from core.pixels import to_uint8
from core.runs import (
    REPLACED_WHOLE,
    atomic_path,
    claim_output,
    disk_full_is_user_error,
    sha256_file,
    write_json,
)
from eval.cache import StatsCache
from eval.data_stats import BATCH_SIZE, data_batches, protocol, split_stats
from eval.inception import extract_features, find_weights, network_loader
from eval.scores import frechet_distance
from stage1_vqvae.evaluate import save_reconstruction_grid, tokenizer_scores
from stage1_vqvae.load import load_tokenizer, tokenizer_folder
from stage1_vqvae.model import VQVAE

logger = logging.getLogger(__name__)


def tokenizer_metrics(tokenizer: VQVAE, data: DataConfig, split: str = "val", batch_size: int = BATCH_SIZE) -> dict:
    """Mean per-image PSNR and SSIM (images in [0, 1]), codebook usage (% of K used) and the
    perplexity of the code histogram, over the whole split (stage 1's own evaluation pass)."""
    loader = DataLoader(load_images(data, split), batch_size=batch_size)
    scores = tokenizer_scores(tokenizer, (batch["image"].to(tokenizer.device) for batch in loader))
    return {name: scores[name] for name in ("psnr", "ssim", "usage", "perplexity", "n_images")} | {"split": split}


@torch.no_grad()
def reconstructions(tokenizer: VQVAE, dataset: ImageDataset, n: int) -> list[torch.Tensor]:
    """uint8 (B, C, H, W) batches of the reconstructions of the first n images of `dataset`."""
    recons = []
    for batch in DataLoader(Subset(dataset, range(n)), batch_size=BATCH_SIZE):
        images = batch["image"].to(tokenizer.device)  # the float images, as training saw them
        recons.append(to_uint8(tokenizer.decode_codes(tokenizer.encode(images))))
    return recons


def rfid(tokenizer: VQVAE, data: DataConfig, n: int, weights: str | Path | None = None, split: str = "val",
         cache: StatsCache | None = None) -> dict:
    """FID of the reconstructions of the first n images of `split` against those images (whose
    statistics come from `cache` when it holds them)."""
    source = find_weights(weights)
    network = network_loader(source)
    dataset = load_images(data, split)
    count = min(n, len(dataset))
    real = split_stats(network, source, dataset, count, cache)
    fake = extract_features(network(), reconstructions(tokenizer, dataset, count), count, desc="rFID reconstructions")
    return {"rfid": frechet_distance(real, fake.features), "rfid_n": count, **protocol(source)}


def save_side_by_side(tokenizer: VQVAE, data: DataConfig, path: Path, n: int = 64, cols: int = 8) -> None:
    """Rows of `cols` pairs: each val image, then its reconstruction at its right."""
    dataset = load_images(data, "val")
    n = min(n, len(dataset))
    originals = torch.cat(list(data_batches(dataset, n))).float() / 255.0
    recons = torch.cat(reconstructions(tokenizer, dataset, n)).float() / 255.0
    save_reconstruction_grid(originals, recons, path, cols, layout="beside")


def reconstruct(
    tokenizer: str | Path, data: DataConfig, out: str | Path, n: int = 64, weights: str | Path | None = None,
    rfid_n: int = 0, cache: StatsCache | None = None,
) -> dict[str, Any]:
    """`vqgen reconstruct`: OUT/reconstructions.png (n val images, each beside its reconstruction) and
    OUT/metrics.json (PSNR/SSIM/usage over the whole val split, rFID over rfid_n images, 0: n; the
    originals' statistics from `cache` when it holds them). OUT is written whole, as a new folder or
    over one reconstruct wrote before."""
    out = Path(out)
    if n < 1 or rfid_n < 0:
        raise VqgenError(f"reconstruct: need --n >= 1 and --rfid-n >= 0 (0: --n); got {n} and {rfid_n}")
    model = load_tokenizer(tokenizer)
    model.config.refuse_two_levels(f"reconstruct: {tokenizer}")  # before the output folder is claimed
    with claim_output(out, "reconstruct"), disk_full_is_user_error(out, REPLACED_WHOLE), \
            atomic_path(out, is_dir=True) as tmp:
        save_side_by_side(model, data, tmp / "reconstructions.png", n)
        metrics = tokenizer_metrics(model, data) | rfid(model, data, rfid_n or n, weights, cache=cache)
        metrics["tokenizer_sha256"] = sha256_file(tokenizer_folder(tokenizer) / "model.safetensors")
        write_json(tmp / "metrics.json", metrics)
    logger.info("wrote %s and %s", out / "reconstructions.png", out / "metrics.json")
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}
