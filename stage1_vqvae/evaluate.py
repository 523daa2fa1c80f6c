"""The tokenizer's evaluation: one pass of whole-set metrics, and one reconstruction grid.

    tokenizer_scores(model, batches)   # {"mse", "psnr", "ssim", "usage", "perplexity", "n_images"}
    save_reconstruction_grid(originals, reconstructions, path)

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
from stage1_vqvae.quantizers import code_perplexity

# How a grid places each reconstruction, and how many tiles that makes a row of `cols` pairs: at its
# original's right, or a row of originals above a row of their reconstructions.
PAIR_LAYOUTS = {"beside": ("(rows cols two)", 2), "rows": ("(rows two cols)", 1)}


def _identity(x):
    return x


@torch.no_grad()
def tokenizer_scores(model: nn.Module, batches: Iterable[Tensor], gather: Callable = _identity) -> dict[str, float]:
    """Over every image of `batches` ((B, C, H, W) in [-1, 1], on the model's device): mean per-image
    MSE (in [-1, 1]), PSNR and SSIM (as images in [0, 1]), the codebook usage (% of the K codes used)
    and the perplexity (exp entropy) of the code histogram, and n_images. `model` is in eval mode (in
    training mode its quantizer would update the codebook). `gather` collects each batch's numbers
    from all processes (accelerate's `gather_for_metrics`)."""
    k = model.config.codebook_size
    counts = torch.zeros(k, dtype=torch.long)
    sums = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    n = 0
    for images in batches:
        output = model(images)
        mse = (output.reconstruction - images).square().flatten(1).mean(1)
        per_image = {"mse": mse, "psnr": psnr_from_mse(mse),
                     "ssim": ssim(output.reconstruction * 0.5 + 0.5, images * 0.5 + 0.5, data_range=1.0,
                                  reduction="none")}
        per_image, codes = gather((per_image, output.codes))
        for name, values in per_image.items():
            sums[name] += float(values.sum())
        counts += torch.bincount(codes.flatten(), minlength=k).cpu()
        n += len(codes)
    scores = {name: total / n for name, total in sums.items()}
    usage = 100.0 * float((counts > 0).double().mean())
    return scores | {"usage": usage, "perplexity": float(code_perplexity(counts.double())), "n_images": n}


def whole_rows(n: int, cols: int) -> int:
    """How many of n pairs a grid of `cols` pairs per row shows: whole rows, or all n when fewer."""
    return n // cols * cols or n


def save_reconstruction_grid(originals: Tensor, reconstructions: Tensor, path: Path, cols: int = 8,
                             layout: str = "beside") -> None:
    """A PNG at `path` of originals (N, C, H, W) and their reconstructions, in [0, 1], `cols` pairs
    a row (the first `whole_rows(N, cols)`), placed by PAIR_LAYOUTS[layout], 1 px apart."""
    count = whole_rows(len(originals), cols)
    cols = min(cols, count)
    pattern, tiles_per_pair = PAIR_LAYOUTS[layout]
    pairs = torch.stack([originals[:count], reconstructions[:count]])
    grid = rearrange(pairs, f"two (rows cols) c h w -> {pattern} c h w", cols=cols)
    with atomic_path(path) as tmp:
        save_image(grid, tmp, nrow=tiles_per_pair * cols, padding=1)
