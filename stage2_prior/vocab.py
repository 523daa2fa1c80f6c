"""The prior's token layout, shared by both architectures and by sampling.

Token ids [0, K) are codes, [K, K+N) one per class, K+N the unconditional token (N = 0 for an
unlabelled code set). A *class index* in [0, N] names the condition, N meaning "none"; the GPT
prior feeds it as token K + index, the PixelCNN as a class-bias row. Dropping the condition to N
during training is what makes classifier-free guidance possible at sampling time
(Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", sec. 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PriorVocab:
    codebook_size: int  # K
    num_classes: int  # N (0: unconditional prior)

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
