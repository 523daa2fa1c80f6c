"""Writes tiny code-grid folders in the stage-1 format (datasets Arrow + vqgen_codes.json) for the tests."""

from pathlib import Path

import datasets
import numpy as np

from core.runs import write_json

K, H, W, N = 16, 4, 4, 4


def shifted_grids(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grids with strong structure: code(i, j) = W*i + (j + s) % W for a shift s per grid, s = its label."""
    shifts = np.random.default_rng(seed).integers(0, W, n)
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    codes = W * i[None] + (j[None] + shifts[:, None, None]) % W
    return codes.astype(np.uint16), shifts.astype(np.int64)


def write_codes(
    folder: Path, n_train: int = 256, n_val: int = 64, labelled: bool = True, val_label: int | None = None,
    **meta_changes,
) -> Path:
    """`val_label`, if given, replaces every val label (to write labels the metadata does not allow)."""
    features = datasets.Features(
        {"codes": datasets.Array2D((H, W), "uint16"), "label": datasets.Value("int64"), "index": datasets.Value("int64")}
    )
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        codes, labels = shifted_grids(n, seed)
        labels = labels if labelled else np.full(n, -1, dtype=np.int64)
        if split == "val" and val_label is not None:
            labels = np.full(n, val_label, dtype=np.int64)
        data = {"codes": list(codes), "label": labels, "index": np.arange(n, dtype=np.int64)}
        datasets.Dataset.from_dict(data, features=features).save_to_disk(str(folder / split))
    meta = {
        "format_version": 1, "codebook_size": K, "grid_h": H, "grid_w": W, "image_size": 16, "channels": 1,
        "num_classes": N if labelled else 0, "data_spec": "synthetic", "splits": {"train": n_train, "val": n_val},
        "tokenizer_sha256": "0" * 64, "tokenizer_path": "none", "vqgen_version": "0.1.0",
    }
    write_json(folder / "vqgen_codes.json", {**meta, **meta_changes})
    return folder
