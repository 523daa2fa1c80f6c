"""Image data sets from a one-word spec, shared by every stage.

    fashion-mnist[:DIR]   Debian's idx files ($FMNIST_DIR, else /usr/share/datasets/fashion-mnist);
                          torchvision's download only when they are missing and we are online
    mnist[:ROOT]          torchvision MNIST under ROOT (default $VQGEN_DATA or ~/.cache/vqgen)
    cifar10[:ROOT]        torchvision CIFAR-10 under ROOT
    folder:PATH           any image tree, recursive; first-level sub-folders are classes when every
                          image sits in one; PATH/train and PATH/val (or test) are used as splits,
                          with one class list built from all of them
    hf:NAME_OR_PATH       a `datasets` data set (saved folder or hub name) with an `image` column and
                          an optional `label` column

Every item is `{"image": (C, H, W) float in [-1, 1], "label": int64 (-1 when none), "index": int64}`.
Where a source has no validation split, a deterministic one is cut from its training split.
Folder and hf images are decoded by `vqgen.data.images` (16-bit scaling, alpha on white, EXIF
orientation). Loading a split reads every image's header once: a bad image stops there, before any
work, or with `skip_bad` is dropped (each image is then decoded in full to find them) and counted in
`ImageDataset.skipped`. The channel count is the whole source's: 3 when any image of any split is
colour, else 1, unless `channels` is set; the conversions are logged once per split.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vqgen.config import setting
from vqgen.errors import VqgenError
from vqgen.data.images import (
    BAD_IMAGE,
    ImageKind,
    ImageSource,
    UnusableImage,
    conversion_notes,
    image_kind,
    read_pixels,
    source_channels,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"


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


class ImageDataset(Dataset):
    """One split of a source, as (C, H, W) floats in [-1, 1]; `skipped` counts the unreadable images
    that data.skip_bad dropped from it."""

    def __init__(self, source: _Source, cfg: DataConfig, split: str, num_classes: int):
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


def deterministic_split(n: int, cfg: DataConfig, split: str) -> np.ndarray:
    """Indices of `split` ("train" or "val") cut from n items by a seeded permutation."""
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * cfg.val_fraction))) if n > 1 else 0
    return np.sort(order[:n_val] if split == "val" else order[n_val:])


class _Source:
    """A split's raw pixels: `get(i)` -> (uint8, or float in [0, 1], (C, h, w), label)."""

    channels = 3
    pad_by_default = False
    skipped = 0  # unreadable images dropped by data.skip_bad

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
        try:
            return read_pixels(self.paths[i], self.channels), self.labels[i]
        except BAD_IMAGE as err:
            raise _unreadable(str(self.paths[i]), err) from None


def _unreadable(name: str, err: Exception, others: int = 0) -> VqgenError:
    """The one line for a bad image, `name` being its path or its hf split and row."""
    reason = str(err) if isinstance(err, UnusableImage) else f"{type(err).__name__}: {err}"
    more = f" (and {others} more bad images in this split)" if others else ""
    return VqgenError(f"{name}: cannot read this image ({reason}){more}; fix or remove it, or pass --data.skip_bad=true")


def _survey(
    images: Iterable[ImageSource], others: Iterable[ImageSource], cfg: DataConfig, split: str, name_of: Callable[[int], str]
) -> tuple[list[int], int, int]:
    """Inspect every image of `split` before any work: (the indices kept, how many skip_bad dropped,
    the channel count). A bad image stops here unless skip_bad; with it, each image is decoded in
    full to find them. `others` are the source's images outside this split, for the channel rule."""
    kinds: dict[int, ImageKind] = {}
    bad: list[tuple[int, Exception]] = []
    for i, image in enumerate(images):
        try:
            kinds[i] = image_kind(image, decode=cfg.skip_bad)
        except BAD_IMAGE as err:
            bad.append((i, err))
    if bad and not cfg.skip_bad:
        raise _unreadable(name_of(bad[0][0]), bad[0][1], len(bad) - 1)
    if bad:
        logger.warning("%s (%s): skipped %d unreadable images (data.skip_bad=true)", cfg.spec, split, len(bad))
    channels = cfg.channels or source_channels(kinds.values(), others, cfg.skip_bad)
    if notes := conversion_notes(list(kinds.values()), channels):
        logger.info("%s (%s): of %d images, %s", cfg.spec, split, len(kinds), notes)
    return list(kinds), len(bad), channels


def _folder(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[_Source, int]:
    root = Path(arg)
    if not root.is_dir():
        raise VqgenError(f"folder:{arg}: not a directory; give the path of an image folder")
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" in split_dirs:
        base = split_dirs[_folder_split(root, split_dirs, split)]
        # Classes come from every split folder, so val's "bee" is the same label as train's.
        trees = {d: _image_files(d) for d in split_dirs.values()}
        paths, chosen = trees[base], np.arange(len(trees[base]))
    else:
        base, paths = root, _image_files(root)
        trees = {root: paths}
        chosen = deterministic_split(len(paths), cfg, "val" if split == "test" else split)
    if not paths:
        raise VqgenError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); add images")
    classes = _folder_classes(trees)
    paths = [paths[i] for i in chosen]
    labels = [classes[p.relative_to(base).parts[0]] if classes else -1 for p in paths]
    taken = set(paths)
    others = (p for tree in trees.values() for p in tree if p not in taken)
    kept, skipped, channels = _survey(paths, others, cfg, split, lambda i: str(paths[i]))
    source = _FileSource([paths[i] for i in kept], [labels[i] for i in kept], channels)
    source.skipped = skipped
    return source, len(classes)


def _folder_split(root: Path, split_dirs: dict[str, Path], split: str) -> str:
    """The split folder that serves `split`: val falls back to test/ and test to val/."""
    want = split if split in split_dirs else ("test" if split == "val" else "val")
    if want not in split_dirs:
        raise VqgenError(f"{root}: has train/ but no val/ or test/ folder; add one")
    return want


def _folder_classes(trees: dict[Path, list[Path]]) -> dict[str, int]:
    """Class name -> label over all split folders; empty (unlabelled) unless every image of every
    folder sits in a first-level sub-folder and there are at least two of them."""
    firsts = [p.relative_to(base).parts for base, paths in trees.items() for p in paths]
    names = sorted({parts[0] for parts in firsts if len(parts) > 1})
    if len(names) < 2 or any(len(parts) == 1 for parts in firsts):
        return {}
    return {name: label for label, name in enumerate(names)}


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class _HFSource(_Source):
    """Rows `rows` of one stored split of a `datasets` data set whose image column is left undecoded
    (`raw`), so that vqgen.data.images decodes it as it does files; a broken image names its row."""

    def __init__(self, raw, rows: np.ndarray, label_column: str | None, channels: int, name: str):
        self.raw, self.rows, self.label_column, self.channels, self.name = raw, rows, label_column, channels, name

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        row = int(self.rows[i])
        item = self.raw[row]
        try:
            pixels = read_pixels(_cell_image(item["image"]), self.channels)
        except BAD_IMAGE as err:
            raise _unreadable(f"{self.name} row {row}", err) from None
        label = int(item[self.label_column]) if self.label_column else -1
        return pixels, label


def _cell_image(cell: dict) -> ImageSource:
    """An undecoded `datasets.Image` cell: its stored bytes, else the path of its file."""
    return io.BytesIO(cell["bytes"]) if cell["bytes"] else cell["path"]


def _hf_images(raw, rows: Iterable[int]) -> Iterator[ImageSource]:
    """The images of `rows`, read 1024 rows at a time."""
    column, rows = raw.select_columns(["image"]), [int(row) for row in rows]
    for start in range(0, len(rows), 1024):
        yield from map(_cell_image, column[rows[start : start + 1024]]["image"])


def _hf_others(raw: dict, stored: str, rows: np.ndarray) -> Iterator[ImageSource]:
    """The images of every stored split outside `rows` of split `stored`."""
    for name, split in raw.items():
        yield from _hf_images(split, np.setdiff1d(np.arange(len(split)), rows) if name == stored else range(len(split)))


def _huggingface(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[_Source, int]:
    import datasets

    try:
        loaded = datasets.load_from_disk(arg) if Path(arg).exists() else datasets.load_dataset(arg)
    except Exception as err:
        raise VqgenError(f"hf:{arg}: cannot load this data set ({type(err).__name__}); check the name or path") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict(train=loaded)
    stored, rows = _pick_hf_split(loaded, cfg, split, arg)
    ds, name = loaded[stored], f"hf:{arg} split '{stored}'"
    if "image" not in ds.column_names:
        raise VqgenError(f"hf:{arg}: no 'image' column (columns: {', '.join(ds.column_names)}); rename it to image")
    if not isinstance(ds.features["image"], datasets.Image):
        raise VqgenError(f"hf:{arg}: the 'image' column holds {type(ds.features['image']).__name__}, not images; "
                         "cast it to datasets.Image()")
    label_column = next((c for c in ("label", "labels") if c in ds.column_names), None)
    # Undecoded: a cheap cast that rewrites nothing, so vqgen.data.images sees every image's own bytes.
    raw = {n: d.cast_column("image", datasets.Image(decode=False))
           for n, d in loaded.items() if isinstance(d.features.get("image"), datasets.Image)}
    kept, skipped, channels = _survey(_hf_images(raw[stored], rows), _hf_others(raw, stored, rows), cfg, split,
                                      lambda i: f"{name} row {rows[i]}")
    source = _HFSource(raw[stored], rows[kept], label_column, channels, name)
    source.skipped = skipped
    return source, _hf_num_classes(loaded, label_column)


def _pick_hf_split(loaded, cfg: DataConfig, split: str, arg: str) -> tuple[str, np.ndarray]:
    """(stored split name, its rows) that serve `split`; val is cut from train when none is stored."""
    if "train" not in loaded:
        raise VqgenError(f"hf:{arg}: no 'train' split (has {', '.join(loaded)}); save one or use a plain Dataset")
    val_name = next((n for n in ("validation", "val", "valid") if n in loaded), None)
    if split == "test" and "test" in loaded:
        stored = "test"
    elif split != "train" and val_name:
        stored = val_name
    elif val_name:
        stored = "train"
    else:
        n = len(loaded["train"])
        return "train", deterministic_split(n, cfg, "train" if split == "train" else "val")
    return stored, np.arange(len(loaded[stored]))


def _hf_num_classes(loaded, label_column: str | None) -> int:
    """N from the ClassLabel feature, else from the largest label over every stored split, so a
    split cut from train agrees with the rest."""
    if label_column is None:
        return 0
    feature = loaded["train"].features.get(label_column)
    if getattr(feature, "num_classes", None):
        return feature.num_classes
    return 1 + max(int(max(d[label_column])) for d in loaded.values() if label_column in d.column_names and len(d))

