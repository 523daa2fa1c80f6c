"""Fixtures shared by the vqgen tests."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """Two classes of 16x16 grey images: dark blobs and bright blobs, 16 of each."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, level in (("dark", 60), ("bright", 190)):
        (root / name).mkdir()
        for i in range(16):
            pixels = np.clip(rng.normal(level, 30, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"{i:02d}.png")
    return root
