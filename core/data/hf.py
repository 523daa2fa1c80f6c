"""hf:NAME_OR_PATH, a `datasets` data set (a saved folder or a hub name) with an `image` column and
an optional `label` (or `labels`) column. Its stored test and validation splits are used; a val
split is cut from train when none is stored. The image column is read undecoded, so that
core.data.images decodes each image from its own bytes, as it does files."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from core.data.config import DataConfig
from core.data.images import BAD_IMAGE, ImageSource, read_pixels
from core.data.source import Source
from core.data.splits import deterministic_split
from core.data.survey import survey, unreadable
from core.errors import VqgenError

ROWS_PER_READ = 1024


class HFSource(Source):
    """Rows `rows` of one stored split of a `datasets` data set whose image column is left undecoded
    (`raw`); a broken image names its row."""

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
            raise unreadable(f"{self.name} row {row}", err) from None
        label = int(item[self.label_column]) if self.label_column else -1
        return pixels, label


def hf_source(cfg: DataConfig, split: str, kind: str, arg: str) -> tuple[Source, int]:
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
    # Undecoded: a cheap cast that rewrites nothing, so core.data.images sees every image's own bytes.
    raw = {n: d.cast_column("image", datasets.Image(decode=False))
           for n, d in loaded.items() if isinstance(d.features.get("image"), datasets.Image)}
    kept, skipped, channels = survey(_hf_images(raw[stored], rows), _hf_others(raw, stored, rows), cfg, split,
                                     lambda i: f"{name} row {rows[i]}")
    source = HFSource(raw[stored], rows[kept], label_column, channels, name)
    source.skipped = skipped
    return source, _hf_num_classes(loaded, label_column)


def _cell_image(cell: dict) -> ImageSource:
    """An undecoded `datasets.Image` cell: its stored bytes, else the path of its file."""
    return io.BytesIO(cell["bytes"]) if cell["bytes"] else cell["path"]


def _hf_images(raw, rows: Iterable[int]) -> Iterator[ImageSource]:
    """The images of `rows`, read ROWS_PER_READ rows at a time."""
    column, rows = raw.select_columns(["image"]), [int(row) for row in rows]
    for start in range(0, len(rows), ROWS_PER_READ):
        yield from map(_cell_image, column[rows[start : start + ROWS_PER_READ]]["image"])


def _hf_others(raw: dict, stored: str, rows: np.ndarray) -> Iterator[ImageSource]:
    """The images of every stored split outside `rows` of split `stored`."""
    for name, split in raw.items():
        yield from _hf_images(split, np.setdiff1d(np.arange(len(split)), rows) if name == stored else range(len(split)))


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
        return "train", deterministic_split(len(loaded["train"]), cfg, split)
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
