"""Turning a prior's next-token logits into tokens: guidance, filtering and the draw itself.

Each step is a small named helper so that the GPT, PixelCNN and MaskGIT samplers share them. The draw is
Gumbel-max (argmax of logits plus Gumbel noise), written as the "exponential race"
argmax(logits - log E) with E ~ Exp(1): the noise is an input, drawn per sample by `SampleNoise`,
so a sample's tokens do not depend on which other samples share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Filters:
    """How logits are reshaped before the draw. temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off


def guide(logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6, written as in LlamaGen):
    rows are [conditional; unconditional] (2B, K) -> l_u + s * (l_c - l_u), shape (B, K).
    scale 1 returns the conditional rows unchanged."""
    cond, uncond = logits.chunk(2, dim=0)
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties at the k-th value are kept), others -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability mass reaches p; the most likely token is always kept."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def shape(logits: Tensor, filters: Filters) -> Tensor:
    """The logits (B, K) a token is drawn from: divided by the temperature, then top-k and top-p
    filtered. Temperature 0 (greedy) leaves them as they are."""
    if filters.temperature == 0.0:
        return logits
    return top_p_filter(top_k_filter(logits / filters.temperature, filters.top_k), filters.top_p)


def draw(logits: Tensor, noise: Tensor | None) -> Tensor:
    """One token per row of shaped logits (B, K), with noise (B, K) Exp(1) draws; None: argmax."""
    if noise is None:
        return logits.argmax(dim=-1)
    # argmax(l - log E) with E ~ Exp(1) is a draw from softmax(l) (Gumbel-max trick)
    return (logits - noise.log()).argmax(dim=-1)


def pick(logits: Tensor, filters: Filters, noise: Tensor | None) -> Tensor:
    """Draw one token per row. logits (B, K) float, noise (B, K) Exp(1) draws -> tokens (B,) int64."""
    greedy = filters.temperature == 0.0
    assert greedy or noise is not None, "sampling at temperature > 0 needs noise"
    return draw(shape(logits, filters), None if greedy else noise)


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 64-bit seed for sample `index` of a run seeded `seed` (no two (seed, index)
    pairs share a stream the way seed + index would)."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


class SampleNoise:
    """One torch.Generator per sample, seeded from (seed, sample index). Drawn on the CPU and moved,
    so a sample is the same whatever its batch, its process, or the device the prior runs on."""

    def __init__(self, seed: int, indices: list[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]
        self.device = torch.device(device)

    def exponential(self, k: int) -> Tensor:
        """Fresh Exp(1) noise of shape (B, k), one row per sample."""
        rows = [torch.empty(k).exponential_(generator=g) for g in self.generators]
        return torch.stack(rows).to(self.device)
