"""The digit and CIFAR sets, held in memory: fashion-mnist from Debian's idx files (torchvision
when they are missing), mnist and cifar10 through torchvision. Each stores train and test; val is
cut from train."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from core.data.config import DataConfig
from core.data.source import Source
from core.data.splits import deterministic_split
from core.errors import VqgenError

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"
NUM_CLASSES = 10


class TensorSource(Source):
    """Pixels held in memory: uint8 (N, C, h, w) and int64 labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad_by_default: bool = False):
        self.images, self.labels = images, labels
        self.channels, self.pad_by_default = images.shape[1], pad_by_default

    def __len__(self) -> int:
        return len(self.images)

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def fashion_mnist_source(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[Source, int]:
    """fashion-mnist[:DIR]: the idx files in DIR, $FMNIST_DIR or Debian's folder; torchvision's
    copy (downloaded if we are online) when that folder is missing or empty."""
    root = Path(arg or os.environ.get("FMNIST_DIR", DEBIAN_FMNIST))
    prefix = "t10k" if split == "test" else "train"
    found = {p: sorted(root.glob(f"{prefix}-{p}-idx*")) for p in ("images", "labels")}
    if not (found["images"] and found["labels"]):
        if not root.exists() or not any(root.iterdir()):
            return torchvision_source(cfg, split, kind, str(root))
        raise VqgenError(f"{root}: no {prefix}-images/labels idx files; install dataset-fashion-mnist or set FMNIST_DIR")
    images = torch.from_numpy(_read_idx(found["images"][0]).copy())[:, None]
    labels = torch.from_numpy(_read_idx(found["labels"][0]).astype(np.int64))
    return _split_tensors(images, labels, cfg, split, pad=True), NUM_CLASSES


def torchvision_source(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[Source, int]:
    """mnist[:ROOT], cifar10[:ROOT] (and fashion-mnist's fallback): torchvision's data set under ROOT."""
    import torchvision

    root = Path(arg or os.environ.get("VQGEN_DATA", Path.home() / ".cache" / "vqgen"))
    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10,
           "fashion-mnist": torchvision.datasets.FashionMNIST}[kind]
    try:
        ds = cls(str(root), train=split != "test", download=False)
    except RuntimeError:
        try:
            ds = cls(str(root), train=split != "test", download=True)
        except Exception as err:
            raise VqgenError(
                f"{kind}: not found under {root} and the download failed ({type(err).__name__}); "
                f"put the files there or pass {kind}:ROOT"
            ) from None
    images = torch.as_tensor(np.asarray(ds.data))
    images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
    return _split_tensors(images.contiguous(), labels, cfg, split, pad=kind != "cifar10"), NUM_CLASSES


def _read_idx(path: Path) -> np.ndarray:
    # torchvision's idx reader takes only uncompressed files, and Debian ships them gzipped.
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _split_tensors(images: torch.Tensor, labels: torch.Tensor, cfg: DataConfig, split: str, pad: bool) -> Source:
    """The stored train set cut into train and val; the stored test set as it is."""
    if split != "test":
        keep = torch.from_numpy(deterministic_split(len(images), cfg, split))
        images, labels = images[keep], labels[keep]
    return TensorSource(images, labels, pad_by_default=pad)
