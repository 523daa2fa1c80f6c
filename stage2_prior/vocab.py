"""The prior's token layout, shared by both architectures and by sampling.

Token ids [0, K) are codes, [K, K+N) one per class, K+N the unconditional token (N = 0 for an
unlabelled code set). A *class index* in [0, N] names the condition, N meaning "none"; the GPT
prior feeds it as token K + index, the PixelCNN as a class-bias row. Dropping the condition to N
during training is what makes classifier-free guidance possible at sampling time
(Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", sec. 3.1).

Two levels (VQ-VAE-2's top and bottom grids) share the code range, one sub-range per level:
top codes [0, K_top), bottom codes [K_top, K_top + K_bottom), so K = K_top + K_bottom and the class
and unconditional tokens follow as above. A GPT sequence is [cond, top codes, bottom codes], each
grid in raster order (`tokens`). One level is one range [0, K): exactly the ids of before levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
from einops import rearrange

from core.code_grids import LEVEL_NAMES

# Codes as the priors and samplers pass them: one grid (B, h, w), or {level name: (B, h, w)} coarse to fine.
Codes = torch.Tensor | Mapping[str, torch.Tensor]


def level_grids(codes: Codes) -> dict[str, torch.Tensor]:
    """Codes as {level name: grid}; one grid is the level `codes`, as in a one-level code folder."""
    return {LEVEL_NAMES[1][0]: codes} if isinstance(codes, torch.Tensor) else dict(codes)


@dataclass(frozen=True)
class PriorVocab:
    codebook_size: int  # K: the code tokens of every level together
    num_classes: int  # N (0: unconditional prior)
    level_sizes: tuple[int, ...] | None = None  # K of each level, coarse to fine; None: one level of K

    def __post_init__(self):
        sizes = (self.codebook_size,) if self.level_sizes is None else tuple(self.level_sizes)
        assert sum(sizes) == self.codebook_size, f"level sizes {sizes} do not add up to K={self.codebook_size}"
        object.__setattr__(self, "level_sizes", sizes)  # so PriorVocab(K, N) == PriorVocab(K, N, (K,))

    @classmethod
    def of_levels(cls, sizes: Sequence[int], num_classes: int) -> PriorVocab:
        """The vocabulary of levels of sizes K_l (coarse to fine) and N classes."""
        return cls(sum(sizes), num_classes, tuple(sizes))

    @property
    def level_ranges(self) -> list[range]:
        """The token ids of each level's codes, coarse to fine: [range(K)] for one level."""
        starts = [0, *accumulate(self.level_sizes)]
        return [range(lo, hi) for lo, hi in zip(starts, starts[1:])]

    @property
    def uncond_index(self) -> int:
        return self.num_classes

    @property
    def uncond_token(self) -> int:
        return self.codebook_size + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + 1

    def class_index(self, labels: torch.Tensor) -> torch.Tensor:
        """Dataset labels (B,) int64, -1 for none -> class indices (B,) in [0, N]."""
        return torch.where(labels < 0, torch.full_like(labels, self.uncond_index), labels)

    def drop_labels(self, index: torch.Tensor, p: float, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Replace each class index (B,) by the unconditional one with probability p.

        The draw comes from the global CPU RNG, which Accelerate checkpoints with `save_state`, so a
        resumed run drops the same labels as an uninterrupted one. Every process draws the numbers
        for the whole global micro-batch (B * world; all ranks share the seed) and keeps its own
        slice, so a 2-process run drops the same labels as a 1-process run of the same global batch.
        """
        if p <= 0:
            return index
        size = index.shape[0]
        u = torch.rand(size * world)[rank * size : (rank + 1) * size].to(index.device)
        return torch.where(u < p, torch.full_like(index, self.uncond_index), index)

    def cond_token(self, index: torch.Tensor) -> torch.Tensor:
        """Class indices (B,) in [0, N] -> GPT condition tokens (B,) in [K, K+N]."""
        return index + self.codebook_size

    def tokens(self, codes: Codes) -> torch.Tensor:
        """Each level's codes (B, h, w) in [0, K_l), coarse to fine -> the code tokens (B, T) of the
        sequence: every grid in raster order, shifted into its level's range."""
        grids = level_grids(codes).values()
        return torch.cat([rearrange(grid, "b h w -> b (h w)") + span.start
                          for grid, span in zip(grids, self.level_ranges)], dim=1)
