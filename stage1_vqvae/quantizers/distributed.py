"""The collectives the quantizers use, each a no-op in a single process.

A codebook (VQ) must stay bit-identical on every rank, and the code statistics behind the usage
meter and LFQ's codebook entropy must count every rank's vectors; everything else stays local.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(x: Tensor) -> Tensor:
    """(n_r, d) on each rank -> (sum n_r, d) on every rank; ranks may hold different row counts."""
    if not distributed():
        return x
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(sizes))
    padded = x.new_zeros(longest, x.shape[1])
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n)] for part, n in zip(parts, sizes)])


def broadcast_(t: Tensor) -> Tensor:
    """Rank 0's values everywhere: decisions made once cannot drift apart between ranks."""
    if distributed():
        dist.broadcast(t, src=0)
    return t


def sum_over_ranks(t: Tensor) -> Tensor:
    """The sum of `t` over all ranks (a copy; no gradient flows back through it)."""
    if distributed():
        t = t.clone()
        dist.all_reduce(t)
    return t


def mean_over_ranks(t: Tensor) -> Tensor:
    """The mean of `t` over all ranks, differentiable: each rank's gradient reaches every rank's
    input, so under DDP (which averages gradients) a loss of the mean gets its true gradient."""
    if not distributed():
        return t
    # Functional collectives are differentiable: backward all-reduces the gradients (a sum).
    return funcol.all_reduce(t, "sum", dist.group.WORLD) / dist.get_world_size()
