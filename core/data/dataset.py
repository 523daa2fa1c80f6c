"""A data spec and a split -> the torch Dataset every stage trains and evaluates on."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from core.data.config import DataConfig
from core.data.folder import folder_source
from core.data.hf import hf_source
from core.data.source import Source
from core.data.splits import SPLITS
from core.data.torchvision_sets import fashion_mnist_source, torchvision_source
from core.data.transforms import to_model_range
from core.errors import VqgenError

# The spec's first word -> its reader: (cfg, split, kind, arg) -> (source, number of classes).
READERS = {"fashion-mnist": fashion_mnist_source, "mnist": torchvision_source, "cifar10": torchvision_source,
           "folder": folder_source, "hf": hf_source}


class ImageDataset(Dataset):
    """One split of a source, as (C, H, W) floats in [-1, 1]; `skipped` counts the unreadable images
    that data.skip_bad dropped from it."""

    def __init__(self, source: Source, cfg: DataConfig, split: str, num_classes: int):
        self.source, self.cfg, self.split = source, cfg, split
        self.spec, self.num_classes, self.image_size = cfg.spec, num_classes, cfg.image_size
        self.channels = cfg.channels or source.channels
        self.pad = cfg.resize == "pad" or (cfg.resize == "auto" and source.pad_by_default)
        self.length = len(source) if cfg.max_images <= 0 else min(cfg.max_images, len(source))
        self.skipped = source.skipped

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pixels, label = self.source.get(i)
        image = to_model_range(pixels, self.image_size, self.channels, self.pad)
        return {"image": image, "label": torch.tensor(label, dtype=torch.long), "index": torch.tensor(i)}


def load_images(cfg: DataConfig, split: str) -> ImageDataset:
    """The `split` ("train", "val" or "test") of the data set `cfg.spec` names."""
    if split not in SPLITS:
        raise VqgenError(f"data split '{split}' is unknown; use one of {', '.join(SPLITS)}")
    if cfg.channels not in (0, 1, 3):
        raise VqgenError(f"data.channels={cfg.channels} is not supported; use 0 (as stored), 1 or 3")
    if cfg.resize not in ("auto", "pad", "resize"):
        raise VqgenError(f"data.resize='{cfg.resize}' is unknown; use auto, pad or resize")
    kind, _, arg = cfg.spec.partition(":")
    if kind not in READERS:
        raise VqgenError(
            f"data spec '{cfg.spec}' is unknown; use fashion-mnist, mnist, cifar10, folder:PATH or hf:NAME"
        )
    source, num_classes = READERS[kind](cfg, split, kind, arg)
    if len(source) == 0:
        raise VqgenError(f"data '{cfg.spec}': the {split} split is empty; add images or lower data.val_fraction")
    return ImageDataset(source, cfg, split, num_classes)
