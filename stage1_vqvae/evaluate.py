"""The tokenizer's evaluation: one pass of whole-set metrics, and one reconstruction grid.

    tokenizer_scores(model, batches)   # {"mse", "psnr", "ssim", "usage", "perplexity", "n_images"}
    save_reconstruction_grid(originals, reconstructions, path)
    top_only_reconstruction(model, images)   # two levels: what the top grid alone holds

With two levels, usage and perplexity are per level (`top/usage`, `bottom/perplexity`, ...).

Training's validation (stage1_vqvae/train.py) and `vqgen reconstruct` (eval/recon.py) both use
them, so a tokenizer's val numbers and pictures mean the same thing wherever they are printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure as ssim
from torchvision.utils import save_image

from core.runs import atomic_path
from stage1_vqvae.losses import psnr_from_mse
from stage1_vqvae.model import BOTTOM, level_key
from stage1_vqvae.quantizers import code_perplexity

# How a grid places each original's reconstructions (n tiles with it), and whether a row of `cols`
# originals takes n tiles each: at its original's right, or rows of originals above rows of each version.
PAIR_LAYOUTS = {"beside": ("(rows cols n)", True), "rows": ("(rows n cols)", False)}


def _identity(x):
    return x


@torch.no_grad()
def tokenizer_scores(model: nn.Module, batches: Iterable[Tensor], gather: Callable = _identity) -> dict[str, float]:
    """Over every image of `batches` ((B, C, H, W) in [-1, 1], on the model's device): mean per-image
    MSE (in [-1, 1]), PSNR and SSIM (as images in [0, 1]), the codebook usage (% of the K codes used)
    and the perplexity (exp entropy) of the code histogram, and n_images. `model` is in eval mode (in
    training mode its quantizer would update the codebook). `gather` collects each batch's numbers
    from all processes (accelerate's `gather_for_metrics`)."""
    counts = {spec.name: torch.zeros(spec.codebook_size, dtype=torch.long) for spec in model.config.level_specs}
    sums = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    n = 0
    for images in batches:
        output = model(images)
        mse = (output.reconstruction - images).square().flatten(1).mean(1)
        per_image = {"mse": mse, "psnr": psnr_from_mse(mse),
                     "ssim": ssim(output.reconstruction * 0.5 + 0.5, images * 0.5 + 0.5, data_range=1.0,
                                  reduction="none")}
        per_image, codes = gather((per_image, {level: q.indices for level, q in output.levels.items()}))
        for name, values in per_image.items():
            sums[name] += float(values.sum())
        for level, level_codes in codes.items():
            counts[level] += torch.bincount(level_codes.flatten(), minlength=len(counts[level])).cpu()
        n += len(per_image["mse"])
    scores = {name: total / n for name, total in sums.items()}
    for level, histogram in counts.items():
        scores[level_key(level, "usage")] = 100.0 * float((histogram > 0).double().mean())
        scores[level_key(level, "perplexity")] = float(code_perplexity(histogram.double()))
    return scores | {"n_images": n}


@torch.no_grad()
def top_only_reconstruction(model: nn.Module, images: Tensor, bottom_code: int | None = None) -> Tensor:
    """Two levels: images (B, C, H, W) in [-1, 1] decoded from their top codes alone, every bottom code
    set to `bottom_code` (None: the most frequent bottom code of these images), so a picture shows what
    the top grid holds (the report puts these beside the full reconstructions)."""
    codes = model.encode_levels(images)
    bottom = codes[BOTTOM]
    if bottom_code is None:
        bottom_code = int(torch.bincount(bottom.flatten()).argmax())  # ties: the lowest code
    return model.decode_levels(codes | {BOTTOM: torch.full_like(bottom, bottom_code)})


def whole_rows(n: int, cols: int) -> int:
    """How many of n pairs a grid of `cols` pairs per row shows: whole rows, or all n when fewer."""
    return n // cols * cols or n


def save_reconstruction_grid(originals: Tensor, reconstructions: Tensor | list[Tensor], path: Path, cols: int = 8,
                             layout: str = "beside") -> None:
    """A PNG at `path` of originals (N, C, H, W) and their reconstructions (one tensor, or several
    versions of them, e.g. [full, top only]), in [0, 1], `cols` originals a row (the first
    `whole_rows(N, cols)`), placed by PAIR_LAYOUTS[layout], 1 px apart."""
    versions = reconstructions if isinstance(reconstructions, list) else [reconstructions]
    count = whole_rows(len(originals), cols)
    cols = min(cols, count)
    pattern, side_by_side = PAIR_LAYOUTS[layout]
    tiles = torch.stack([originals[:count], *(v[:count] for v in versions)])
    grid = rearrange(tiles, f"n (rows cols) c h w -> {pattern} c h w", cols=cols)
    with atomic_path(path) as tmp:
        save_image(grid, tmp, nrow=len(tiles) * cols if side_by_side else cols, padding=1)
