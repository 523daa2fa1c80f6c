"""folder:PATH, any image tree read lazily: first-level sub-folders are classes when every image
sits in one; PATH/train and PATH/val (or test) are used as splits, with one class list built from
all of them, and without them val (and test) is cut from the whole tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.data.config import DataConfig
from core.data.images import BAD_IMAGE, read_pixels
from core.data.source import Source
from core.data.splits import SPLITS, deterministic_split
from core.data.survey import survey, unreadable
from core.errors import VqgenError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class FileSource(Source):
    """Image files read lazily; an unreadable one names its path."""

    def __init__(self, paths: list[Path], labels: list[int], channels: int):
        self.paths, self.labels, self.channels = paths, labels, channels

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return read_pixels(self.paths[i], self.channels), self.labels[i]
        except BAD_IMAGE as err:
            raise unreadable(str(self.paths[i]), err) from None


def folder_source(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[Source, int]:
    root = Path(arg)
    if not root.is_dir():
        raise VqgenError(f"folder:{arg}: not a directory; give the path of an image folder")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" in split_dirs:
        base = split_dirs[_folder_split(root, split_dirs, split)]
        # Classes come from every split folder, so val's "bee" is the same label as train's.
        trees = {d: _image_files(d) for d in split_dirs.values()}
        paths, chosen = trees[base], np.arange(len(trees[base]))
    else:
        base, paths = root, _image_files(root)
        trees = {root: paths}
        chosen = deterministic_split(len(paths), cfg, split)
    if not paths:
        raise VqgenError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); add images")
    classes = _folder_classes(trees)
    paths = [paths[i] for i in chosen]
    labels = [classes[p.relative_to(base).parts[0]] if classes else -1 for p in paths]
    taken = set(paths)
    others = (p for tree in trees.values() for p in tree if p not in taken)
    kept, skipped, channels = survey(paths, others, cfg, split, lambda i: str(paths[i]))
    source = FileSource([paths[i] for i in kept], [labels[i] for i in kept], channels)
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
