"""The PatchGAN discriminator of VQGAN's adversarial loss (Isola et al. 2017, pix2pix §3.2.2).

Modified from taming-transformers' `NLayerDiscriminator` (taming/modules/discriminator/model.py):
a 4x4 convolution of stride 2 per layer with LeakyReLU(0.2), the width doubling per layer up to 8x, then
two 4x4 convolutions of stride 1; each logit judges one patch of the image. At 256 px and 3 layers that
is pix2pix's 70x70 PatchGAN with a 30x30 grid of logits; at 28-32 px the grid is 1x1 to 2x2.

GroupNorm where taming has BatchNorm. BatchNorm normalises by the statistics of the batch on each
process: a 2-process run (each process its half) computes other numbers than a 1-process run,
SyncBatchNorm would cost an all-reduce per layer and still differ under gradient accumulation, real
and fake images judged in one batch would share statistics, and at batch 1 with a 1x1 grid (28 px)
the statistics degenerate. GroupNorm (Wu & He 2018) normalises each image on its own, so the logits of
an image do not depend on the rest of its batch, how it is split, or its size; it has no running
buffers to keep in step either.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.errors import VqgenError

KERNEL, MAX_WIDTH_MULT, MAX_GROUPS = 4, 8, 32


def patch_grid(image_size: int, layers: int) -> int:
    """The side of the discriminator's grid of logits for `image_size` images (0: too small for `layers`)."""
    side = image_size
    for _ in range(layers):
        side = (side + 2 - KERNEL) // 2 + 1  # stride 2, padding 1
    return max(0, side - 2)  # two stride-1 convolutions, each one pixel smaller


def check_patch_grid(image_size: int, layers: int, key: str) -> None:
    """One line when `layers` stride-2 layers leave no patch of an `image_size` image."""
    if patch_grid(image_size, layers) < 1:
        most = max(n for n in range(layers) if patch_grid(image_size, n) >= 1) if image_size >= 4 else 0
        raise VqgenError(f"{key}={layers} halves data.image_size={image_size} until no patch is left; "
                         f"use at most {most}")


def _groups(channels: int) -> int:
    # Up to 32 groups (Wu & He's default) of at least 2 channels each: a group of one channel of a 1x1
    # map would normalise a single number to 0.
    return math.gcd(MAX_GROUPS, max(1, channels // 2))


class PatchDiscriminator(nn.Module):
    """images (B, C, H, W) in [-1, 1] -> logits (B, 1, h', w'), one per patch; h' = patch_grid(H, layers)."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3):
        super().__init__()
        widths = [channels * min(2**n, MAX_WIDTH_MULT) for n in range(layers + 1)]
        blocks = [nn.Sequential(nn.Conv2d(in_channels, widths[0], KERNEL, 2, 1), nn.LeakyReLU(0.2))]
        for n in range(1, layers + 1):
            stride = 2 if n < layers else 1
            blocks.append(nn.Sequential(
                nn.Conv2d(widths[n - 1], widths[n], KERNEL, stride, 1, bias=False),  # the norm has the bias
                nn.GroupNorm(_groups(widths[n]), widths[n]),
                nn.LeakyReLU(0.2),
            ))
        self.blocks = nn.ModuleList(blocks)
        self.logits = nn.Conv2d(widths[-1], 1, KERNEL, 1, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DCGAN's initialisation, as taming's `weights_init`: convolutions N(0, 0.02), norms N(1, 0.02)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor, features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """images (B, C, H, W) -> logits (B, 1, h', w'); with `features`, also each block's output
        (B, C_i, H_i, W_i), the maps pix2pixHD's feature-matching loss compares."""
        maps = []
        h = images
        for block in self.blocks:
            h = block(h)
            maps.append(h)
        logits = self.logits(h)
        return (logits, maps) if features else logits
