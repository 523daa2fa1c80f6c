"""Lookup-free quantization (Yu et al. 2023, MAGVIT-v2, "Language Model Beats Diffusion", §3.1).

Each of d dimensions is quantized to its sign, so the codebook is {-1, 1}^d (K = 2^d) and a code id
is the binary number of its signs (first dimension most significant, as vector-quantize-pytorch's
`LFQ`). Losses, both already weighted:

    commitment  beta * ||z - sg(q)||^2
    entropy     entropy_weight * (E[H(p(c|z))] - H(E[p(c|z)])),  p(c|z) = softmax_c(2 z.c / T)

in training mode (§3.1 eq. 4: each vector confident, the batch spread over the whole codebook).
p(c|z) is a product over dimensions, p(c_i = 1|z) = sigmoid(4 z_i / T), so the per-sample entropy
is a sum of d binary entropies, computed exactly without the (N, K) matrix. The codebook entropy
needs the (N, 2^d) mixture; above `entropy_group_bits` it is taken over groups of bits and summed
(an upper bound on the joint entropy that is maximal when every group is used uniformly), which
keeps K = 2^16 and beyond in memory. Under several processes the mean probabilities are averaged
over all ranks before their entropy (a differentiable all-reduce), so the penalty sees the global
batch, as in vector-quantize-pytorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from core.config import setting
from stage1_vqvae.quantizers.base import Quantized, Quantizer, QuantizerConfig, project, straight_through
from stage1_vqvae.quantizers.distributed import mean_over_ranks


@dataclass
class LFQConfig(QuantizerConfig):
    kind: ClassVar[str] = "lfq"
    size_key: ClassVar[str] = "bits"

    bits: int = setting(10, "d, the dimensions quantized to their sign: K = 2**d", ge=1)
    beta: float = setting(0.25, "commitment weight on the encoder term beta*||z - sg(q)||^2", ge=0)
    entropy_weight: float = setting(0.1, "weight of the entropy penalty (MAGVIT-v2 eq. 4)", ge=0)
    entropy_temperature: float = setting(0.01, "T of the code distribution softmax(2 z.c / T)", gt=0)
    entropy_group_bits: int = setting(
        12, "codebook entropy over groups of at most this many bits (N x 2**this probabilities each); "
        ">= bits: exact", ge=1, le=20)

    @property
    def codebook_size(self) -> int:
        return 2**self.bits


class LookupFreeQuantizer(Quantizer):
    """z (B, D, h, w) -> signs of the d = bits projected dimensions; losses "commitment" and, in
    training mode, "entropy"."""

    def __init__(self, config: LFQConfig, dim: int):
        super().__init__(config.codebook_size, config.usage_window)
        self.config = config
        d = config.bits
        self.project_in = nn.Linear(dim, d) if dim != d else nn.Identity()
        self.project_out = nn.Linear(d, dim) if dim != d else nn.Identity()
        self._register_constants()
        groups = math.ceil(d / config.entropy_group_bits)
        self.group_sizes = [d // groups + (i < d % groups) for i in range(groups)]  # balanced, in bit order

    def constants(self) -> dict[str, Tensor]:
        # 2^(d-1) .. 1, MSB first, shaped (d, 1, 1) to broadcast over (B, d, h, w).
        return {"bit_values": (2 ** torch.arange(self.config.bits - 1, -1, -1)).view(-1, 1, 1)}

    def quantize(self, z: Tensor) -> Quantized:
        x = project(self.project_in, z).float()  # (B, d, h, w)
        positive = x > 0
        q = torch.where(positive, 1.0, -1.0)
        indices = (positive.long() * self.bit_values).sum(1)
        losses = {"commitment": self.config.beta * F.mse_loss(x, q)}
        if self.training:
            rows = rearrange(x, "b d h w -> (b h w) d")
            losses["entropy"] = self.config.entropy_weight * (self._sample_entropy(rows) - self._codebook_entropy(rows))
        return Quantized(project(self.project_out, straight_through(x, q)), indices, losses)

    def lookup(self, indices: Tensor) -> Tensor:
        bits = (indices.unsqueeze(1) & self.bit_values) != 0  # (B, d, h, w)
        return project(self.project_out, torch.where(bits, 1.0, -1.0))

    def _sample_entropy(self, x: Tensor) -> Tensor:
        """E_n[H(p(c|z_n))]: the sum of the d per-dimension binary entropies, averaged over rows."""
        logits = 4.0 * x / self.config.entropy_temperature  # log p(c_i = 1) - log p(c_i = -1)
        p = torch.sigmoid(logits)
        # -p log p - (1-p) log(1-p), with log p = -softplus(-l), log(1-p) = -softplus(l): no log(0)
        return (p * F.softplus(-logits) + (1 - p) * F.softplus(logits)).sum(1).mean()

    def _codebook_entropy(self, x: Tensor) -> Tensor:
        """H(E_n[p(c|z_n)]) over the batch of every rank, summed over the groups of bits."""
        means = []
        for group in torch.split(x, self.group_sizes, dim=1):  # (N, g)
            codes = _sign_codes(group.shape[1], x.device)  # (2^g, g)
            probs = torch.softmax(group @ codes.t() * (2.0 / self.config.entropy_temperature), dim=1)
            means.append(probs.mean(0))
        mean = mean_over_ranks(torch.cat(means))  # one all-reduce for every group
        entropies = [-(m * m.clamp(min=1e-30).log()).sum() for m in torch.split(mean, [2**g for g in self.group_sizes])]
        return torch.stack(entropies).sum()


def _sign_codes(bits: int, device: torch.device) -> Tensor:
    """All 2^bits sign vectors (2^bits, bits) in {-1, 1}, row i the binary number i (MSB first)."""
    values = 2 ** torch.arange(bits - 1, -1, -1, device=device)
    ones = (torch.arange(2**bits, device=device).unsqueeze(1) & values) != 0
    return torch.where(ones, 1.0, -1.0)
