"""The split names, and the seeded val split cut from a source that stores no validation set."""

from __future__ import annotations

import numpy as np

from core.data.config import DataConfig

SPLITS = ("train", "val", "test")


def deterministic_split(n: int, cfg: DataConfig, split: str) -> np.ndarray:
    """Indices of `split` cut from n items by a seeded permutation: "train", or "val". "test" gets
    the val cut, so a source that stores one split (a flat folder, an hf train split) serves both."""
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * cfg.val_fraction))) if n > 1 else 0
    return np.sort(order[n_val:] if split == "train" else order[:n_val])
