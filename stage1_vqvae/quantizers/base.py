"""The interface every quantizer keeps, after vector-quantize-pytorch's split of the quantizer
(projections, straight-through, losses) from its codes (`Codebook` / `get_output_from_indices`):

    out = quantizer(z)             # z (B, D, h, w) -> QuantizerOutput
    quantizer.lookup(out.indices)  # == out.z_q in eval mode, for every kind
    quantizer.codebook_size        # K, derived from the settings (FSQ: product of levels; LFQ: 2**d)

A kind supplies `quantize` (z -> `Quantized`) and `lookup`; the usage and perplexity meters
(`meters.py`) are applied here, once for every kind. FSQ and LFQ work on the channels in place
((B, d, h, w), `project`): moving D last and back costs two copies of z, more than their whole
quantization step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from core.config import check, setting
from core.errors import VqgenError
from stage1_vqvae.quantizers.meters import CodeUsageMeters

# Codes are stored as uint32 at most (core.code_grids.code_dtype), and the priors' vocabulary
# holds every code id that can be stored: code ids run up to 2**32 - 1.
MAX_CODEBOOK_SIZE = 2**32
SOURCE, PREFIX = "tokenizer config", "model.quantizer."  # how errors name a setting


@dataclass
class QuantizerConfig:
    """The base of every kind's settings (`model.quantizer`): the settings all kinds share, and the
    checks each kind's settings get when they are made. A kind has `codebook_size`, K, as a setting
    or as a property derived from its settings."""

    kind: ClassVar[str]  # its name in model.quantizer.kind
    size_key: ClassVar[str]  # the setting that decides K

    usage_window: int = setting(100, "training `usage` = share of codes used in the last this-many steps", ge=1)

    def __post_init__(self) -> None:
        check(self, PREFIX, SOURCE)
        if self.codebook_size > MAX_CODEBOOK_SIZE:
            value = getattr(self, self.size_key)
            raise VqgenError(
                f"{SOURCE}: {PREFIX}{self.size_key}={list(value) if isinstance(value, tuple) else value} makes "
                f"K = {self.codebook_size} codes, more than the 2**32 that stored codes (uint32) and the prior's "
                f"vocabulary can hold; lower {PREFIX}{self.size_key}")


class QuantizerOutput(NamedTuple):
    z_q: Tensor  # (B, D, h, w) quantized vectors; straight-through gradients to z when training
    indices: Tensor  # (B, h, w) int64 code ids in [0, K)
    losses: dict[str, Tensor]  # named terms, each already weighted; the tokenizer loss sums them
    perplexity: Tensor  # scalar: exp(entropy) of this batch's code histogram on this process
    usage: Tensor  # scalar in [0, 1]: training, codes used in the last usage_window steps (all
    #                ranks); eval, codes used on this process since `reset_usage()`


class Quantized(NamedTuple):
    """What a kind's `quantize` returns."""

    z_q: Tensor  # (B, D, h, w)
    indices: Tensor  # (B, h, w) int64
    losses: dict[str, Tensor]
    counts: Tensor | None = None  # (K,) this process's code histogram, when the kind already made it
    global_counts: Tensor | None = None  # (K,) summed over ranks, when the kind already did (training)


class Quantizer(CodeUsageMeters, ABC):
    """Maps encoder outputs z (B, D, h, w) to quantized vectors and their K code ids.

    In training mode a forward may also update state (codebook, meters) and, under
    torch.distributed, take part in collectives: every rank must call it the same number of
    times, as DDP does. Eval mode never communicates.
    """

    def forward(self, z: Tensor) -> QuantizerOutput:
        """z (B, D, h, w) -> QuantizerOutput(z_q (B, D, h, w), indices (B, h, w), losses, ...)."""
        q = self.quantize(z)
        counts = q.counts
        if counts is None:
            counts = torch.bincount(q.indices.flatten(), minlength=self.codebook_size)
        perplexity, usage = self.measure(counts, q.global_counts)
        return QuantizerOutput(q.z_q.to(z.dtype), q.indices, q.losses, perplexity, usage)

    def constants(self) -> dict[str, Tensor]:
        """Tensors derived from the settings alone (a grid's levels, bit values): registered as
        buffers that are not saved, and computed again by whoever loads saved weights into an
        uninitialised model (transformers' `_init_weights`, as for rotary embeddings)."""
        return {}

    def _register_constants(self) -> None:
        for name, value in self.constants().items():
            self.register_buffer(name, value, persistent=False)

    @abstractmethod
    def quantize(self, z: Tensor) -> Quantized:
        """z (B, D, h, w) -> quantized z_q (B, D, h, w), code ids (B, h, w) and loss terms."""

    @abstractmethod
    def lookup(self, indices: Tensor) -> Tensor:
        """indices (B, h, w) int64 -> z_q (B, D, h, w), equal to forward's z_q in eval mode."""


def project(layer: nn.Linear | nn.Identity, x: Tensor) -> Tensor:
    """`layer` applied to the channels of x (B, C, h, w) -> (B, C', h, w), in place of moving C last."""
    if isinstance(layer, nn.Identity):
        return x
    b, c, h, w = x.shape
    # (B, C', C) @ (B, C, hw): bmm of the weight expanded (not copied) over the batch; 2-4x faster
    # on CPU than matmul's broadcasting, which copies x into rows, or a 1x1 conv.
    y = torch.bmm(layer.weight.expand(b, -1, -1), x.reshape(b, c, h * w))
    return y.add_(layer.bias.unsqueeze(1)).view(b, -1, h, w)


def straight_through(x: Tensor, q: Tensor) -> Tensor:
    """q forward, identity backward to x (VQ-VAE §3.1); just q when no gradient is wanted, so that
    eval outputs equal `lookup` bit for bit (x + (q - x) may round differently from q)."""
    return x + (q - x).detach() if x.requires_grad else q.detach()
