"""The sample folder: one PNG per image, per-batch code shards, and the joined results.

    OUT/images/000123_c7.png    sample 123, class 7 (`_cu`: unconditional)
    OUT/shards/codes_<first>_<last>.npz   codes, labels and indices of one batch (written first)
    OUT/codes.npz               every sample's codes (N, h, w), labels (N,), indices (N,), joined at the end;
                                a two-level prior's: one array per level, top (N, h, w) and bottom (N, h', w'),
                                in place of codes
    OUT/grid.png                the first samples in a grid (one row per class with per_class)

Every file is written atomically, so a killed run leaves only whole files, and a sample counts as
done when both its PNG and a shard holding its codes exist; a rerun makes only the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.io import decode_png, encode_png
from torchvision.utils import make_grid

from core.pixels import to_uint8
from core.runs import atomic_path
from stage2_prior.vocab import Codes, level_grids

GRID_MAX = 100  # images shown in grid.png
NOT_CODES = ("labels", "indices")  # a shard's other arrays: every other array is a level's codes


def image_name(index: int, label: int) -> str:
    return f"{index:06d}_c{'u' if label < 0 else label}.png"


def write_png(path: Path, image: Tensor) -> None:
    """image uint8 (C, H, W) -> a PNG file, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_png(image).numpy().tobytes())


def write_images(out: Path, indices: list[int], labels: Tensor, images: Tensor) -> None:
    """One PNG per sample; images (B, C, H, W) float in [-1, 1]."""
    for index, label, image in zip(indices, labels.tolist(), to_uint8(images)):
        write_png(out / "images" / image_name(index, label), image)


def write_shard(out: Path, indices: list[int], labels: Tensor, codes: Codes) -> None:
    """The codes (B, h, w) of one batch, or one array per level, named by its first and last index."""
    path = out / "shards" / f"codes_{indices[0]:06d}_{indices[-1]:06d}.npz"
    grids = {name: grid.numpy() for name, grid in level_grids(codes).items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **grids, labels=labels.numpy(), indices=np.asarray(indices, dtype=np.int64))


def read_shards(out: Path) -> dict[int, tuple[dict[str, np.ndarray], int]]:
    """index -> ({level: codes (h, w)}, label) over every shard in OUT/shards (a rerun may repeat an
    index; sampling is deterministic, so any copy will do)."""
    found = {}
    for path in sorted((out / "shards").glob("codes_*.npz")):
        with np.load(path) as shard:
            names = [name for name in shard.files if name not in NOT_CODES]
            grids = {name: shard[name] for name in names}
            for b, (index, label) in enumerate(zip(shard["indices"], shard["labels"])):
                found[int(index)] = ({name: grid[b] for name, grid in grids.items()}, int(label))
    return found


def finished(out: Path, labels: Tensor) -> set[int]:
    """Indices whose PNG and codes are both on disk."""
    in_shards = read_shards(out)
    return {i for i in in_shards if i < len(labels) and (out / "images" / image_name(i, int(labels[i]))).is_file()}


def join_codes(out: Path, n: int) -> Path:
    """Write OUT/codes.npz from the shards: codes (n, h, w) (or one array per level), labels (n,),
    indices (n,) in index order."""
    found = read_shards(out)
    missing = [i for i in range(n) if i not in found]
    assert not missing, f"samples {missing[:5]} have no codes shard"
    grids = {name: np.stack([found[i][0][name] for i in range(n)]).astype(np.int64) for name in found[0][0]}
    labels = np.asarray([found[i][1] for i in range(n)], dtype=np.int64)
    with atomic_path(out / "codes.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **grids, labels=labels, indices=np.arange(n, dtype=np.int64))
    return out / "codes.npz"


def write_grid(out: Path, labels: Tensor, indices: list[int], per_row: int) -> Path:
    """OUT/grid.png from the sample PNGs of `indices`, per_row images per row."""
    paths = [out / "images" / image_name(i, int(labels[i])) for i in indices]
    images = torch.stack([decode_png(torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8)) for p in paths])
    grid = make_grid(images, nrow=per_row, padding=2, pad_value=255)
    write_png(out / "grid.png", grid)
    return out / "grid.png"
