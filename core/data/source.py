"""What every reader returns: one split's raw pixels and labels, read one image at a time."""

from __future__ import annotations

import torch


class Source:
    """A split's raw pixels: `get(i)` -> (uint8, or float in [0, 1], (C, h, w), label; -1 when none).
    `channels` is the source's own count, `skipped` the unreadable images data.skip_bad dropped."""

    channels = 3
    pad_by_default = False
    skipped = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError
