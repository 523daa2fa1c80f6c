"""Model-range images back to stored pixels, for every writer and scorer of images.

    to_uint8(images)   # (B, C, H, W) float in [-1, 1] -> uint8 in [0, 255], as a PNG stores them

The way in (stored pixels -> [-1, 1]) is the data layer's; this is its inverse, shared by stage 1's
reconstructions, sampling's PNGs and evaluation, so all of them store and score the same bytes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_uint8(images: Tensor) -> Tensor:
    """images (B, C, H, W) float in [-1, 1] (any float dtype, any device) -> uint8 (B, C, H, W) in
    [0, 255] on the CPU: clamped, then rounded to the nearest level as a PNG writer would store them."""
    # float32 first: bf16 (autocast) cannot hold 127.5 * x exactly, and would shift levels.
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
