"""`vqgen complete`: complete image files with a trained generator and write a completion folder.

    OUT/complete_config.json      the settings, the images (paths and sha256) and what was kept
    OUT/completions/002_005.png   completion 5 of image 2 (the images in the order given)
    OUT/codes.npz                 codes (B, n, h, w), keep (B, h, w), labels (B,)
    OUT/grid.png                  a row per image: original | kept part (dropped codes grey) | completions

An image is read as the data pipeline reads one (`core.data.images.read_pixels`) and converted to
the tokenizer's size and channels as its training data was (padded for the digit sets, else
centre-cropped and resized). The codes to keep are the top rows (`keep_rows`) or a mask file:

    a PNG (any image PIL reads) with one pixel per code (w x h, the code grid) or the tokenizer's
    image size (one pixel per image pixel: a code is kept when all its pixels are white); white
    (>= 50% grey) keeps, black drops.

Every file is written atomically; a rerun with the same settings writes the same files again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torchvision.utils import make_grid

from core.data import BAD_IMAGE, to_model_range
from core.data.images import read_pixels
from core.distributed import process_state
from core.errors import VqgenError
from core.pixels import to_uint8
from core.runs import atomic_path, claim_output, sha256_file
from sampling.complete import Completion, check_completion, complete_images, keep_rows
from sampling.decode import check_pair, claim_folder
from sampling.generate import SampleConfig
from sampling.write import write_png
from stage1_vqvae.load import TRAINING_FILE, load_tokenizer, tokenizer_folder, training_data
from stage1_vqvae.model import VQVAE
from stage2_prior.load import load_prior, prior_folder

SETTINGS_FILE = "complete_config.json"
PADDED_SPECS = ("fashion-mnist", "mnist")  # the sets data.resize=auto pads (core/data/torchvision_sets.py)


def read_image(path: Path, tokenizer: VQVAE, pad: bool) -> Tensor:
    """The image file at `path` as the tokenizer's input, (C, H, W) in [-1, 1]."""
    if not path.is_file():
        raise VqgenError(f"--image {path}: not found; pass an image file (PNG, JPEG, ...)")
    config = tokenizer.config
    try:
        pixels = read_pixels(path, config.in_channels)
    except BAD_IMAGE as err:
        raise VqgenError(f"--image {path}: cannot read it as an image ({err}); pass a PNG or JPEG file") from None
    if min(pixels.shape[1:]) == 0:
        raise VqgenError(f"--image {path}: the image is empty (0 pixels on a side); pass another")
    return to_model_range(pixels, config.image_size, config.in_channels, pad)


def pads(tokenizer_dir: str | Path) -> bool:
    """Whether images are padded (not cropped and resized) to the tokenizer's size, as its training
    data was; a tokenizer without its training record crops and resizes."""
    if not (tokenizer_folder(tokenizer_dir) / TRAINING_FILE).is_file():
        return False
    data = training_data(tokenizer_dir)
    return data.resize == "pad" or (data.resize == "auto" and data.spec.partition(":")[0] in PADDED_SPECS)


def read_keep_mask(path: Path, grid_h: int, grid_w: int, image_size: int) -> Tensor:
    """The keep mask file at `path` (see the module doc) -> (h, w) bool."""
    if not path.is_file():
        raise VqgenError(f"--keep-mask {path}: not found; pass a PNG, white where codes are kept")
    try:
        pixels = read_pixels(path, 1)[0]
    except BAD_IMAGE as err:
        raise VqgenError(f"--keep-mask {path}: cannot read it as an image ({err}); pass a PNG") from None
    white = (pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels) >= 0.5
    if tuple(white.shape) == (grid_h, grid_w):
        return white
    factor = image_size // grid_h
    if tuple(white.shape) == (image_size, image_size) and grid_h == grid_w:
        return rearrange(white, "(h a) (w b) -> h w (a b)", a=factor, b=factor).all(-1)
    raise VqgenError(f"--keep-mask {path}: {white.shape[1]}x{white.shape[0]} pixels, but it must be {grid_w}x{grid_h} "
                     f"(one pixel per code) or {image_size}x{image_size} (the tokenizer's image size); white keeps")


def complete(prior_dir: str | Path, tokenizer_dir: str | Path, images: list[Path], keep: int | Path,
             cfg: SampleConfig, out: str | Path) -> Path:
    """Complete the image files `images` keeping the top `keep` rows of codes (an int) or the codes
    a mask file keeps (a path); write the completion folder OUT (see the module doc). Returns OUT."""
    out, images = Path(out), [Path(p) for p in images]
    prior, tokenizer = load_prior(prior_dir), load_tokenizer(tokenizer_dir)
    check_pair(prior, Path(prior_dir), tokenizer)
    grid_h, grid_w, size = prior.meta.grid_h, prior.meta.grid_w, tokenizer.config.image_size
    mask = keep_rows(grid_h, grid_w, keep) if isinstance(keep, int) else read_keep_mask(keep, grid_h, grid_w, size)
    pixels = torch.stack([read_image(path, tokenizer, pads(tokenizer_dir)) for path in images])
    settings = {**dataclasses.asdict(cfg), "per_class": None, "images": [str(p) for p in images],
                "image_sha256": [sha256_file(p) for p in images],
                "keep_rows": keep if isinstance(keep, int) else None,
                "keep_mask": None if isinstance(keep, int) else str(keep),
                "keep_mask_sha256": None if isinstance(keep, int) else sha256_file(keep),
                "tokenizer_sha256": sha256_file(tokenizer_folder(tokenizer_dir) / "model.safetensors"),
                "prior_sha256": sha256_file(prior_folder(prior_dir) / "model.safetensors")}
    check_completion(prior, len(images), mask, cfg)  # before anything is written
    prior.model.to(process_state().device)
    with claim_output(out, "completions"):
        claim_folder(out, settings, SETTINGS_FILE)
        done = complete_images(prior, tokenizer, pixels, mask, cfg)
        write_completions(out, done, mask.expand(len(images), grid_h, grid_w))
    return out


def write_completions(out: Path, done: Completion, keep: Tensor) -> None:
    """The PNGs, codes.npz and grid.png of a completion folder (see the module doc)."""
    n = done.codes.shape[1]
    for i, images in enumerate(to_uint8(rearrange(done.completions, "b n c h w -> (b n) c h w"))):
        write_png(out / "completions" / f"{i // n:03d}_{i % n:03d}.png", images)
    with atomic_path(out / "codes.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, codes=done.codes.numpy(), keep=keep.numpy(), labels=done.labels.numpy())
    rows = torch.cat([done.original[:, None], done.kept[:, None], done.completions], dim=1)  # (B, 2 + n, C, H, W)
    grid = make_grid(to_uint8(rearrange(rows, "b k c h w -> (b k) c h w")), nrow=n + 2, padding=2, pad_value=255)
    write_png(out / "grid.png", grid)
