"""The tokenizer's evaluation: one pass of whole-set metrics.

    tokenizer_scores(model, batches)   # {"mse", "psnr", "ssim", "usage", "perplexity", "n_images"}

Training's validation (stage1_vqvae/train.py) and `vqgen reconstruct` (eval/recon.py) both use
it, so a tokenizer's val numbers mean the same thing wherever they are printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from stage1_vqvae.losses import psnr_from_mse
from stage1_vqvae.quantize import code_perplexity


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

