"""A folder of sample images to score, checked in one cheap pass before any network sees them.

The pass opens every file's header (PIL reads a PNG's size and mode without decoding its pixels)
and `verify`s it (a PNG's chunk checksums: a truncated or damaged file fails here). It costs ~25-85
us an image against ~0.1-3 ms to decode one and far more for Inception, so the one decode of every
image stays in the Inception pass. The pass refuses, naming the file:
- a file PIL cannot read;
- alpha, 16-bit or float pixels (FID scores 8-bit images; vqgen writes 8-bit L or RGB PNGs);
- an image of another size, or grey among colour images, than the first one (a mixed folder would
  be scored without a word, each image resized or repeated to RGB its own way).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from core.data import BAD_IMAGE, IMAGE_SUFFIXES
from core.errors import VqgenError

MIN_IMAGES = 2  # a covariance needs two images (KID needs four and says so where it is reported)
GREY_MODES = ("1", "L")
COLOUR_MODES = ("RGB", "P", "CMYK", "YCbCr")  # PIL converts each to RGB as a viewer shows it
# Not an OSError: a huge image would otherwise escape as a traceback.
UNREADABLE = (*BAD_IMAGE, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageFormat:
    """What every image of a folder shares: height, width and channels (1 grey, 3 colour)."""

    height: int
    width: int
    channels: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height} {'grey' if self.channels == 1 else 'RGB'}"


def check_count(n: int, what: str) -> None:
    """Refuse asking for n `what` (0: all) where FID needs a covariance."""
    if n < 0 or n == 1:
        raise VqgenError(f"{n} {what} asked for: FID needs at least {MIN_IMAGES} (a covariance), KID 4; "
                         f"ask for {MIN_IMAGES} or more, or 0 for all")


def check_available(n: int, available: int, where: str) -> None:
    """Refuse n images (0: all) from `where`, which holds `available`: more than there are, or fewer
    than FID needs (a slice would quietly score fewer, one image gives NaN)."""
    if n > available:
        raise VqgenError(f"{where}: {n} images asked for, {available} there; ask for at most {available} (0: all)")
    if (n or available) < MIN_IMAGES:
        raise VqgenError(f"{where}: {available} image{'' if available == 1 else 's'} found; FID needs at least "
                         f"{MIN_IMAGES} (a covariance), KID 4: add images")


def sample_paths(root: Path, n: int = 0) -> list[Path]:
    """The first n (0: all) image files under `root`, sorted. Hidden files and folders are left out:
    they are temporary copies that a killed writer left behind (`.NAME.png.XXXX.tmp/`)."""
    check_count(n, "samples")
    if not root.is_dir():
        raise VqgenError(f"{root}: {'not a folder' if root.exists() else 'not found'}; pass the folder of PNG "
                         "samples (`vqgen sample` writes them to OUT/images)")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise VqgenError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                         "pass a folder of PNG samples")
    check_available(n, len(paths), str(root))
    return paths[:n] if n else paths


def image_format(path: Path) -> ImageFormat:
    """The format of one image from its header, its PNG checksums verified; one line if unusable."""
    try:
        with Image.open(path) as im:
            (width, height), mode, transparent = im.size, im.mode, "transparency" in im.info
            im.verify()
    except UNREADABLE as err:
        raise VqgenError(f"{path}: cannot read this image ({type(err).__name__}: {err}); "
                         "delete or rewrite it, or move it out of the samples folder") from None
    if mode not in GREY_MODES + COLOUR_MODES or transparent:
        raise VqgenError(f"{path}: PIL mode {mode}{' with transparency' if transparent else ''}; FID scores "
                         "8-bit grey or RGB images without alpha: save the samples as 8-bit L or RGB PNGs")
    return ImageFormat(height, width, 1 if mode in GREY_MODES else 3)


def folder_format(paths: list[Path]) -> ImageFormat:
    """The one format of `paths`; the first image of another size or channel count is refused."""
    first = image_format(paths[0])
    for path in paths[1:]:
        fmt = image_format(path)
        if fmt != first:
            raise VqgenError(f"{path}: is {fmt}, {paths[0].name} and the images before it are {first}; "
                             "FID scores one size and channel count at a time: move it out, or convert "
                             "every sample to one format first")
    return first


def check_reference_format(fmt: ImageFormat, size: int, channels: int, ref: str, fix: str) -> None:
    """Refuse samples of another size or channel count than the reference images (a falsy size or
    channels: unknown, not checked). Inception would resize or repeat them without a word."""
    other_size = bool(size) and (fmt.height, fmt.width) != (size, size)
    if other_size or (bool(channels) and channels != fmt.channels):
        want = ImageFormat(size or fmt.height, size or fmt.width, channels or fmt.channels)
        raise VqgenError(f"{ref}: reference images are {want}, the samples {fmt}; {fix}")


class SampleFolder(Dataset):
    """The first n (0: all) images under `root`, checked (see the module docstring); items are uint8
    (C, H, W), C = `format.channels` (Inception repeats grey to RGB itself)."""

    def __init__(self, root: str | Path, n: int = 0):
        self.root = Path(root)
        self.paths = sample_paths(self.root, n)
        self.format = folder_format(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        path, fmt = self.paths[i], self.format
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("L" if fmt.channels == 1 else "RGB"))
        except UNREADABLE as err:  # damage that PNG checksums cannot see (or a file changed since)
            raise VqgenError(f"{path}: cannot decode this image ({type(err).__name__}: {err}); "
                             "delete or rewrite it") from None
        if array.shape[:2] != (fmt.height, fmt.width):
            raise VqgenError(f"{path}: changed while being scored (now {array.shape[1]}x{array.shape[0]}); "
                             "score a folder nothing else writes to")
        return torch.from_numpy(array.copy()).reshape(fmt.height, fmt.width, -1).permute(2, 0, 1)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """uint8 (B, C, H, W) batches in file order."""
        yield from DataLoader(self, batch_size=batch_size)
