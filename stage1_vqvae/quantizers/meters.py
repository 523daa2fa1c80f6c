"""Codebook usage and perplexity, measured the same way for every kind of quantizer.

    usage (training)  share of the K codes used in the last `usage_window` steps, on any rank
    usage (eval)      share of the K codes used on this process since `reset_usage()`
    perplexity        exp(entropy) of this batch's code histogram on this process: K when every
                      code is used equally, 1 when one code is
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stage1_vqvae.quantizers.distributed import distributed, sum_over_ranks


def code_perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of a code histogram counts (K,), in the float dtype of counts (float32 for
    integers): K when all K codes are used equally, 1 when one code is."""
    probs = counts / counts.sum()
    return torch.special.xlogy(probs, probs).sum().neg().exp()  # xlogy: an unused code adds 0, not NaN


class CodeUsageMeters(nn.Module):
    """The meters' state: `step` and `last_used` (K,) are buffers, so a resumed run reports the
    same usage as an uninterrupted one, and DDP's buffer broadcast only ever copies equal values
    (every rank records the same global counts)."""

    def __init__(self, codebook_size: int, usage_window: int):
        super().__init__()
        self.codebook_size = codebook_size
        self.usage_window = usage_window
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_used", torch.full((codebook_size,), -1, dtype=torch.long))
        # A meter of this process's eval counts, not model state: a plain attribute, so DDP's
        # buffer broadcast leaves each rank's own counts alone.
        self._usage_counts: Tensor | None = None

    @torch.no_grad()
    def measure(self, counts: Tensor, global_counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """This batch's code histogram counts (K,) on this process -> (perplexity, usage). In training,
        `global_counts` are the counts summed over all ranks (summed here when not given)."""
        self._usage_counts = counts if self._usage_counts is None else self._usage_counts + counts
        perplexity = code_perplexity(counts)
        if not self.training:
            return perplexity, (self._usage_counts > 0).float().mean()
        used = (sum_over_ranks(counts) if global_counts is None else global_counts) > 0
        self.last_used.masked_fill_(used, int(self.step))
        self.step += 1
        recent = (self.last_used >= 0) & (self.last_used >= self.step - self.usage_window)
        return perplexity, recent.float().mean()

    def reset_usage(self) -> None:
        """Start a fresh usage count, e.g. before a validation pass."""
        self._usage_counts = None

    def usage_since_reset(self, sync: bool = True) -> float:
        """Share of the K codes hit since `reset_usage()`; with sync, over all ranks (collective)."""
        counts = self._usage_counts
        if counts is None:
            counts = torch.zeros(self.codebook_size, dtype=torch.long, device=self.last_used.device)
        if sync and distributed():
            counts = sum_over_ranks(counts)
        return (counts > 0).float().mean().item()
