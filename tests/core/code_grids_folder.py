"""Writes code-grid folders from tensors through the format's own writer (core.code_grids), for tests
that need one level or two without a tokenizer."""

import json
import shutil
from pathlib import Path

import torch

from core.code_grids import META_FILE, GridLevel, grid_rows, join_shards, new_meta, write_shard

ONE = (GridLevel("codes", 4, 4, 16),)
TWO = (GridLevel("top", 2, 2, 512), GridLevel("bottom", 4, 4, 70000))  # 70000: the bottom is stored as uint32


def random_grids(levels, n: int, seed: int) -> dict[str, torch.Tensor]:
    """{level name: (n, h, w) int64 codes in [0, K)}, every level's full range used."""
    gen = torch.Generator().manual_seed(seed)
    grids = {lv.name: torch.randint(0, lv.codebook_size, (n, lv.grid_h, lv.grid_w), generator=gen) for lv in levels}
    for lv in levels:  # the largest code of each level, so the dtype rule is exercised at its edge
        grids[lv.name][0, 0, 0] = lv.codebook_size - 1
    return grids


def _rows(codes: dict[str, torch.Tensor], labels: list[int], indices: list[int], levels):
    yield from grid_rows(codes, labels, indices, levels)


def write_grids(folder: Path, levels=ONE, n_train: int = 10, n_val: int = 6, meta_changes: dict | None = None):
    """A code-grid folder written as `dump_codes` writes one: each split in two shards joined in order.
    `meta_changes` then overwrite fields of its vqgen_codes.json. Returns (folder, {split: (codes {level name: (n, h, w)}, labels (n,))})."""
    staging, written = folder.with_name(f".{folder.name}.shards"), {}
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        codes, labels = random_grids(levels, n, seed), torch.arange(n) % 3
        for rank, part in enumerate((range(0, n // 2), range(n // 2, n))):
            sliced = {name: grid[part.start:part.stop] for name, grid in codes.items()}
            write_shard(_rows, {"codes": sliced, "labels": tuple(labels[part.start:part.stop].tolist()),
                                "indices": tuple(part), "levels": tuple(levels)},
                        levels, staging / split / f"rank_{rank:05d}")
        written[split] = (codes, labels)
    meta = new_meta(levels, image_size=16, channels=1, num_classes=3, data_spec="synthetic",
                    splits={"train": n_train, "val": n_val}, tokenizer_sha256="0" * 64, tokenizer_path="none",
                    vqgen_version="test")
    join_shards(staging, folder, meta)
    shutil.rmtree(staging)
    edit_meta(folder, **(meta_changes or {}))
    return folder, written


def edit_meta(folder: Path, **changes) -> dict:
    """Overwrite fields of the folder's vqgen_codes.json (as a hand edit would); returns the new contents."""
    meta = {**json.loads((folder / META_FILE).read_text()), **changes}
    (folder / META_FILE).write_text(json.dumps(meta))
    return meta
