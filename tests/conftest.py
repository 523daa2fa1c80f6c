"""Offline, deterministic test settings shared by every test folder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FMNIST = Path(os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def fmnist_available() -> bool:
    if not any(FMNIST.glob("train-images-idx*")):
        pytest.skip(f"Fashion-MNIST not installed in {FMNIST} (apt-get install dataset-fashion-mnist)")
    return True
