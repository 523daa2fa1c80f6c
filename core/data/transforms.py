"""Raw pixels -> model input: the [-1, 1] range, the channel count, padding or crop and resize."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_model_range(pixels: torch.Tensor, size: int, channels: int, pad: bool) -> torch.Tensor:
    """uint8 (C, h, w), or float (C, h, w) in [0, 1] (16-bit and float files) -> float
    (channels, size, size) in [-1, 1]: pad or center-crop and resize."""
    x = pixels.float() / 127.5 - 1.0 if pixels.dtype == torch.uint8 else pixels.float() * 2.0 - 1.0
    if x.shape[0] != channels:
        # ITU-R 601 luma, the weights PIL's convert("L") uses.
        x = x.repeat(3, 1, 1) if channels == 3 else (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, True)
    h, w = x.shape[1:]
    if pad and h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top), value=-1.0)
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top : top + side, left : left + side]
    if side != size:
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(-1.0, 1.0)
