"""Image data sets from a one-word spec, shared by every stage.

    fashion-mnist[:DIR]   Debian's idx files ($FMNIST_DIR, else /usr/share/datasets/fashion-mnist);
                          torchvision's download only when they are missing and we are online
    mnist[:ROOT]          torchvision MNIST under ROOT (default $VQGEN_DATA or ~/.cache/vqgen)
    cifar10[:ROOT]        torchvision CIFAR-10 under ROOT
    folder:PATH           any image tree, recursive; first-level sub-folders are classes when every
                          image sits in one; PATH/train and PATH/val (or test) are used as splits
    hf:NAME_OR_PATH       a `datasets` data set (saved folder or hub name) with an `image` column and
                          an optional `label` column

Every item is `{"image": (C, H, W) float in [-1, 1], "label": int64 (-1 when none), "index": int64}`.
Where a source has no validation split, a deterministic one is cut from its training split.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vqgen.errors import VqgenError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"


@dataclass
class DataConfig:
    spec: str = "fashion-mnist"
    image_size: int = 32  # Fashion-MNIST's 28x28 is padded to 32x32
    channels: int = 0  # 0: the source's own; 1 or 3 to convert
    resize: str = "auto"  # auto | pad | resize: auto pads the 28x28 digit sets, crops and resizes the rest
    val_fraction: float = 0.05  # deterministic val split where the source has none
    split_seed: int = 0
    skip_bad: bool = False  # skip unreadable images (and count them) instead of stopping
    max_images: int = 0  # 0: all; >0 keeps the first N of the split


class ImageDataset(Dataset):
    """One split of a source, as (C, H, W) floats in [-1, 1]."""

    def __init__(self, source: _Source, cfg: DataConfig, split: str, num_classes: int):
        self.source, self.cfg, self.split = source, cfg, split
        self.spec, self.num_classes, self.image_size = cfg.spec, num_classes, cfg.image_size
        self.channels = cfg.channels or source.channels
        self.pad = cfg.resize == "pad" or (cfg.resize == "auto" and source.pad_by_default)
        self.length = len(source) if cfg.max_images <= 0 else min(cfg.max_images, len(source))

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
    loaders = {"fashion-mnist": _fashion_mnist, "mnist": _torchvision, "cifar10": _torchvision,
               "folder": _folder, "hf": _huggingface}
    if kind not in loaders:
        raise VqgenError(
            f"data spec '{cfg.spec}' is unknown; use fashion-mnist, mnist, cifar10, folder:PATH or hf:NAME"
        )
    source, num_classes = loaders[kind](cfg, split, kind, arg)
    if len(source) == 0:
        raise VqgenError(f"data '{cfg.spec}': the {split} split is empty; add images or lower data.val_fraction")
    return ImageDataset(source, cfg, split, num_classes)


def to_model_range(pixels: torch.Tensor, size: int, channels: int, pad: bool) -> torch.Tensor:
    """uint8 (C, h, w) -> float (channels, size, size) in [-1, 1]: pad or center-crop and resize."""
    x = pixels.float() / 127.5 - 1.0
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


def deterministic_split(n: int, cfg: DataConfig, split: str) -> np.ndarray:
    """Indices of `split` ("train" or "val") cut from n items by a seeded permutation."""
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * cfg.val_fraction))) if n > 1 else 0
    return np.sort(order[:n_val] if split == "val" else order[n_val:])


class _Source:
    """A split's raw pixels: `get(i)` -> (uint8 (C, h, w), label)."""

    channels = 3
    pad_by_default = False

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class _TensorSource(_Source):
    """Pixels held in memory: uint8 (N, C, h, w) and int64 labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad_by_default: bool = False):
        self.images, self.labels = images, labels
        self.channels, self.pad_by_default = images.shape[1], pad_by_default

    def __len__(self) -> int:
        return len(self.images)

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def _read_idx(path: Path) -> np.ndarray:
    # torchvision's idx reader takes only uncompressed files, and Debian ships them gzipped.
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[_Source, int]:
    root = Path(arg or os.environ.get("FMNIST_DIR", DEBIAN_FMNIST))
    prefix = "t10k" if split == "test" else "train"
    found = {p: sorted(root.glob(f"{prefix}-{p}-idx*")) for p in ("images", "labels")}
    if not (found["images"] and found["labels"]):
        if not root.exists() or not any(root.iterdir()):
            return _torchvision(cfg, split, kind, str(root))
        raise VqgenError(f"{root}: no {prefix}-images/labels idx files; install dataset-fashion-mnist or set FMNIST_DIR")
    images = torch.from_numpy(_read_idx(found["images"][0]).copy())[:, None]
    labels = torch.from_numpy(_read_idx(found["labels"][0]).astype(np.int64))
    return _split_tensors(images, labels, cfg, split, pad=True), 10


def _torchvision(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[_Source, int]:
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
    return _split_tensors(images.contiguous(), labels, cfg, split, pad=kind != "cifar10"), 10


def _split_tensors(images: torch.Tensor, labels: torch.Tensor, cfg: DataConfig, split: str, pad: bool) -> _Source:
    if split != "test":
        keep = torch.from_numpy(deterministic_split(len(images), cfg, split))
        images, labels = images[keep], labels[keep]
    return _TensorSource(images, labels, pad_by_default=pad)


class _FileSource(_Source):
    """Image files read lazily; an unreadable one names its path."""

    def __init__(self, paths: list[Path], labels: list[int], channels: int):
        self.paths, self.labels, self.channels = paths, labels, channels

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        return _read_image(self.paths[i], self.channels), self.labels[i]


def _read_image(path: Path, channels: int) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise VqgenError(f"{path}: cannot read this image ({err}); fix or delete it, or pass --data.skip_bad=true") from None
    return torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)


def _folder(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[_Source, int]:
    root = Path(arg)
    if not root.is_dir():
        raise VqgenError(f"folder:{arg}: not a directory; give the path of an image folder")
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" in split_dirs:
        want = split if split in split_dirs else ("test" if split == "val" else "val")
        if want not in split_dirs:
            raise VqgenError(f"{root}: has train/ but no val/ or test/ folder; add one")
        paths = _image_files(split_dirs[want])
        base, chosen = split_dirs[want], np.arange(len(paths))
    else:
        paths, base = _image_files(root), root
        chosen = deterministic_split(len(paths), cfg, "val" if split == "test" else split)
    if not paths:
        raise VqgenError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); add images")
    classes = sorted({p.relative_to(base).parts[0] for p in paths if len(p.relative_to(base).parts) > 1})
    labelled = all(len(p.relative_to(base).parts) > 1 for p in paths) and len(classes) > 1
    paths = [paths[i] for i in chosen]
    labels = [classes.index(p.relative_to(base).parts[0]) if labelled else -1 for p in paths]
    channels = cfg.channels or _first_readable_channels(paths)
    if cfg.skip_bad:
        paths, labels = _drop_unreadable(paths, labels)
    return _FileSource(paths, labels, channels), len(classes) if labelled else 0


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _first_readable_channels(paths: list[Path]) -> int:
    for path in paths[:16]:
        try:
            with Image.open(path) as im:
                return 1 if im.mode in ("1", "L", "I;16", "I", "F") else 3
        except (OSError, UnidentifiedImageError):
            continue
    return 3


def _drop_unreadable(paths: list[Path], labels: list[int]) -> tuple[list[Path], list[int]]:
    kept_paths, kept_labels = [], []
    for path, label in zip(paths, labels):
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, UnidentifiedImageError, ValueError):
            continue
        kept_paths.append(path)
        kept_labels.append(label)
    if len(kept_paths) < len(paths):
        logger.warning("skipped %d unreadable images (data.skip_bad=true)", len(paths) - len(kept_paths))
    return kept_paths, kept_labels


class _HFSource(_Source):
    def __init__(self, ds, label_column: str | None, channels: int):
        self.ds, self.label_column, self.channels = ds, label_column, channels

    def __len__(self) -> int:
        return len(self.ds)

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.ds[int(i)]
        im = row["image"].convert("L" if self.channels == 1 else "RGB")
        array = np.asarray(im)
        label = int(row[self.label_column]) if self.label_column else -1
        return torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1), label


def _huggingface(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[_Source, int]:
    import datasets

    try:
        loaded = datasets.load_from_disk(arg) if Path(arg).exists() else datasets.load_dataset(arg)
    except Exception as err:
        raise VqgenError(f"hf:{arg}: cannot load this data set ({type(err).__name__}); check the name or path") from None
    ds = _pick_hf_split(loaded, cfg, split, arg)
    if "image" not in ds.column_names:
        raise VqgenError(f"hf:{arg}: no 'image' column (columns: {', '.join(ds.column_names)}); rename it to image")
    label_column = next((c for c in ("label", "labels") if c in ds.column_names), None)
    num_classes = 0
    if label_column:
        feature = ds.features[label_column]
        num_classes = getattr(feature, "num_classes", None) or int(max(ds[label_column])) + 1
    first = ds[0]["image"]
    channels = cfg.channels or (1 if first.mode in ("1", "L") else 3)
    return _HFSource(ds, label_column, channels), num_classes


def _pick_hf_split(loaded, cfg: DataConfig, split: str, arg: str):
    import datasets

    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict(train=loaded)
    if "train" not in loaded:
        raise VqgenError(f"hf:{arg}: no 'train' split (has {', '.join(loaded)}); save one or use a plain Dataset")
    val_name = next((n for n in ("validation", "val", "valid") if n in loaded), None)
    if split == "test" and "test" in loaded:
        return loaded["test"]
    if split != "train" and val_name:
        return loaded[val_name]
    if val_name:
        return loaded["train"]
    train = loaded["train"]
    return train.select(deterministic_split(len(train), cfg, "train" if split == "train" else "val"))
