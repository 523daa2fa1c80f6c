"""Tokenizer metrics: PSNR, SSIM and codebook usage over a split, and rFID of its reconstructions.

rFID (as in LlamaGen's tokenizer tables) is the FID of reconstructed val images against the same
val images, with the standard Inception network (eval/inception.py). The originals' statistics are
those of any data split, so they come from the statistics cache (eval/cache.py) when it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

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
from stage1_vqvae.evaluate import save_reconstruction_grid, tokenizer_scores, top_only_reconstruction
from stage1_vqvae.load import load_tokenizer, tokenizer_folder
from stage1_vqvae.model import BOTTOM, VQVAE

logger = logging.getLogger(__name__)

TOP_ONLY_PNG = "reconstructions_top_only.png"  # two levels: what the top grid alone holds


def tokenizer_metrics(tokenizer: VQVAE, data: DataConfig, split: str = "val", batch_size: int = BATCH_SIZE,
                      n: int = 0) -> dict:
    """Mean per-image PSNR and SSIM (images in [0, 1]), codebook usage (% of K used) and the
    perplexity of the code histogram (two levels: each level's, `top/usage`, `bottom/perplexity`, ...),
    over the first n images of the split (0: the whole split; stage 1's own evaluation pass)."""
    loader = DataLoader(_first(load_images(data, split), n), batch_size=batch_size)
    scores = tokenizer_scores(tokenizer, (batch["image"].to(tokenizer.device) for batch in loader))
    return {name: value for name, value in scores.items() if name != "mse"} | {"split": split}


def _first(dataset: ImageDataset, n: int) -> Dataset:
    """The first n images of `dataset` (0: all of them)."""
    return Subset(dataset, range(min(n, len(dataset)))) if n else dataset


def _image_batches(tokenizer: VQVAE, dataset: ImageDataset, n: int) -> Iterator[torch.Tensor]:
    """The float (B, C, H, W) batches of the first n images of `dataset`, as training saw them, on the
    tokenizer's device."""
    for batch in DataLoader(_first(dataset, n), batch_size=BATCH_SIZE):
        yield batch["image"].to(tokenizer.device)


@torch.no_grad()
def reconstructions(tokenizer: VQVAE, dataset: ImageDataset, n: int) -> list[torch.Tensor]:
    """uint8 (B, C, H, W) batches of the reconstructions of the first n images of `dataset` (from
    every level's codes)."""
    return [to_uint8(tokenizer.decode_levels(tokenizer.encode_levels(images)))
            for images in _image_batches(tokenizer, dataset, n)]


@torch.no_grad()
def top_only_reconstructions(tokenizer: VQVAE, dataset: ImageDataset, n: int) -> list[torch.Tensor]:
    """Two levels: uint8 batches of the first n images of `dataset` decoded from their top codes alone,
    every bottom code set to the most frequent bottom code of those n images (one code for all, so
    the pictures differ only by what the top grid holds)."""
    batches = list(_image_batches(tokenizer, dataset, n))
    bottom = torch.cat([tokenizer.encode_levels(images)[BOTTOM].flatten() for images in batches])
    code = int(torch.bincount(bottom).argmax())  # ties: the lowest code
    return [to_uint8(top_only_reconstruction(tokenizer, images, code)) for images in batches]


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
    dataset, originals = _val_originals(data, n)
    recons = torch.cat(reconstructions(tokenizer, dataset, len(originals))).float() / 255.0
    save_reconstruction_grid(originals, recons, path, cols, layout="beside")


def save_top_only(tokenizer: VQVAE, data: DataConfig, path: Path, n: int = 64, cols: int = 8) -> None:
    """Two levels: groups of three rows of `cols` val images: the images, their full reconstructions,
    and their reconstructions from the top codes alone (`top_only_reconstructions`), as stage 1's val grid."""
    dataset, originals = _val_originals(data, n)
    versions = [torch.cat(make(tokenizer, dataset, len(originals))).float() / 255.0
                for make in (reconstructions, top_only_reconstructions)]
    save_reconstruction_grid(originals, versions, path, cols, layout="rows")


def _val_originals(data: DataConfig, n: int) -> tuple[ImageDataset, torch.Tensor]:
    """The val split and its first n images (N, C, H, W) as floats in [0, 1]."""
    dataset = load_images(data, "val")
    return dataset, torch.cat(list(data_batches(dataset, min(n, len(dataset))))).float() / 255.0


def reconstruct(
    tokenizer: str | Path, data: DataConfig, out: str | Path, n: int = 64, weights: str | Path | None = None,
    rfid_n: int = 0, cache: StatsCache | None = None,
) -> dict[str, Any]:
    """`vqgen reconstruct`: OUT/reconstructions.png (n val images, each beside its reconstruction) and
    OUT/metrics.json (PSNR/SSIM/usage over the whole val split, rFID over rfid_n images, 0: n; the
    originals' statistics from `cache` when it holds them). A two-level tokenizer adds
    OUT/reconstructions_top_only.png (`save_top_only`), and its usage and perplexity are per level.
    OUT is written whole, as a new folder or over one reconstruct wrote before."""
    out = Path(out)
    if n < 1 or rfid_n < 0:
        raise VqgenError(f"reconstruct: need --n >= 1 and --rfid-n >= 0 (0: --n); got {n} and {rfid_n}")
    model = load_tokenizer(tokenizer)
    with claim_output(out, "reconstruct"), disk_full_is_user_error(out, REPLACED_WHOLE), \
            atomic_path(out, is_dir=True) as tmp:
        save_side_by_side(model, data, tmp / "reconstructions.png", n)
        if model.config.levels == 2:
            save_top_only(model, data, tmp / TOP_ONLY_PNG, n)
        metrics = tokenizer_metrics(model, data) | rfid(model, data, rfid_n or n, weights, cache=cache)
        metrics["tokenizer_sha256"] = sha256_file(tokenizer_folder(tokenizer) / "model.safetensors")
        write_json(tmp / "metrics.json", metrics)
    logger.info("wrote %s and %s", out / "reconstructions.png", out / "metrics.json")
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}
