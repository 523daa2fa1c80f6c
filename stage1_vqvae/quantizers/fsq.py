"""Finite scalar quantization (Mentzer et al. 2023, "FSQ: VQ-VAE Made Simple", arXiv:2309.15505).

Each of d = len(levels) dimensions is bounded to (-L_i/2, L_i/2) and rounded to one of L_i values,
so the codebook is the grid of all level combinations: K = prod(L_i), every code reachable, no
codebook to learn and no codebook or commitment loss. A linear projection maps D <-> d when the
encoder's D differs from d.

The bound is the paper's (§3, appendix A.1): tanh, scaled by (L - 1)(1 + eps) / 2, with a half-level
offset for even L so that the rounded values are the L integers around 0. The shift uses atanh,
the inverse the paper's listing meant (it prints tan), as vector-quantize-pytorch's `FSQ` does, so
both give the same codes for the same inputs (tests/stage1_vqvae/test_fsq.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from core.config import setting
from stage1_vqvae.quantizers.base import Quantized, Quantizer, QuantizerConfig, project, straight_through

BOUND_EPS = 1e-3  # appendix A.1: keeps tanh's range just wider than the outermost levels


@dataclass
class FSQConfig(QuantizerConfig):
    kind: ClassVar[str] = "fsq"
    size_key: ClassVar[str] = "levels"

    levels: tuple[int, ...] = setting(
        (8, 5, 5, 5), "values per dimension, K = their product: [8,5,5,5] -> 1000, [8,8,8,5,5,5] -> 64000 "
        "(paper Table 1); a level of 2 would put almost every input on one value", ge=3, min_length=1)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)


class FiniteScalarQuantizer(Quantizer):
    """z (B, D, h, w) -> each of d = len(levels) projected dimensions rounded to its grid; no losses."""

    def __init__(self, config: FSQConfig, dim: int):
        super().__init__(config.codebook_size, config.usage_window)
        self.config = config
        d = len(config.levels)
        self.project_in = nn.Linear(dim, d) if dim != d else nn.Identity()
        self.project_out = nn.Linear(d, dim) if dim != d else nn.Identity()
        self._register_constants()

    def constants(self) -> dict[str, Tensor]:
        """The grid, one value per dimension, shaped (d, 1, 1) to broadcast over (B, d, h, w)."""
        # float32 arithmetic in vector-quantize-pytorch's order, so boundary values round alike.
        levels = torch.tensor(self.config.levels, dtype=torch.int32)
        half_l = (levels - 1) * (1 + BOUND_EPS) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        # Mixed radix, first dimension least significant (as vector-quantize-pytorch numbers codes).
        basis = torch.cumprod(torch.tensor([1, *self.config.levels[:-1]]), dim=0)
        values = {"levels": levels.long(), "half_l": half_l, "offset": offset, "shift": torch.atanh(offset / half_l),
                  "half_width": (levels // 2).float(), "basis": basis}
        return {name: value.view(-1, 1, 1) for name, value in values.items()}

    def quantize(self, z: Tensor) -> Quantized:
        x = project(self.project_in, z).float()  # (B, d, h, w)
        bounded = torch.tanh(x + self.shift) * self.half_l - self.offset
        rounded = bounded.round()
        # Straight through the rounding only: the gradient still sees the tanh bound (§3).
        z_q = project(self.project_out, straight_through(bounded, rounded) / self.half_width)
        indices = ((rounded + self.half_width).long() * self.basis).sum(1)
        return Quantized(z_q, indices, {})

    def lookup(self, indices: Tensor) -> Tensor:
        digits = indices.unsqueeze(1) // self.basis % self.levels  # (B, d, h, w)
        return project(self.project_out, (digits - self.half_width) / self.half_width)
