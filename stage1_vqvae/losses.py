"""The tokenizer's training loss: pixel reconstruction plus the quantizer's terms (VQ-VAE eq. 3).

    loss = recon(x, x_hat) + commitment [+ codebook, for a learned (non-EMA) codebook]

The quantizer already weighs its commitment term by beta. Pixel MSE is the default, as in the
VQ-VAE paper; L1 (used by taming-transformers' pixel term) is sharper on edges but lowers PSNR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from stage1_vqvae.model import VQVAEOutput

RECONSTRUCTION = ("mse", "l1")


@dataclass
class TokenizerLoss:
    loss: torch.Tensor  # the scalar to backpropagate
    kind: str  # the pixel term: "mse" or "l1"
    reconstruction: torch.Tensor  # the pixel term alone
    mse: torch.Tensor  # pixel MSE in [-1, 1] units, reported whatever the pixel term is
    psnr: torch.Tensor  # dB, for images rescaled to [0, 1]
    quantizer: dict[str, torch.Tensor]  # "commitment" [, "codebook"]

    def log(self) -> dict[str, torch.Tensor]:
        """Scalars for the metrics log, without the `train/` prefix the loop adds."""
        terms = {"loss": self.loss, "mse": self.mse, "psnr": self.psnr}
        if self.kind != "mse":
            terms[self.kind] = self.reconstruction
        return {name: value.detach() for name, value in (terms | self.quantizer).items()}


def psnr_from_mse(mse: torch.Tensor | float) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1], measured as if they were in [0, 1] (peak 1): the range halves,
    so the [0, 1] MSE is mse / 4."""
    mse01 = torch.as_tensor(mse, dtype=torch.float32) / 4.0
    return 10.0 * torch.log10(1.0 / mse01.clamp(min=1e-10))


def tokenizer_loss(images: torch.Tensor, output: VQVAEOutput, kind: Literal["mse", "l1"] = "mse") -> TokenizerLoss:
    """images and output.reconstruction (B, C, H, W) in [-1, 1] -> TokenizerLoss."""
    if kind not in RECONSTRUCTION:
        raise ValueError(f"reconstruction loss {kind!r} is unknown; use one of {', '.join(RECONSTRUCTION)}")
    mse = F.mse_loss(output.reconstruction, images)
    recon = mse if kind == "mse" else F.l1_loss(output.reconstruction, images)
    total = recon + sum(output.losses.values(), torch.zeros((), device=images.device))
    return TokenizerLoss(total, kind, recon, mse.detach(), psnr_from_mse(mse.detach()), dict(output.losses))
