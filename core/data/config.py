"""The `data:` settings every stage reads: which source, and how its images become model input."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import setting


@dataclass
class DataConfig:
    spec: str = setting("fashion-mnist", "fashion-mnist, mnist, cifar10, folder:PATH or hf:NAME")
    image_size: int = setting(32, "image side in pixels; Fashion-MNIST's 28x28 is padded to 32x32", ge=1)
    channels: int = setting(0, "0: the source's own; 1 or 3 to convert", choices=(0, 1, 3))
    resize: str = setting("auto", "auto pads the 28x28 digit sets, crops and resizes the rest",
                          choices=("auto", "pad", "resize"))
    val_fraction: float = setting(0.05, "deterministic val split where the source has none", gt=0, lt=1)
    split_seed: int = setting(0, "seeds that val split", ge=0)
    skip_bad: bool = setting(False, "skip unreadable images (and count them) instead of stopping")
    max_images: int = setting(0, "0: all; >0 keeps the first N of the split", ge=0)
