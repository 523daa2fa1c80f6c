"""Fixtures shared by the eval tests: Inception weight files in the real key layout, a private torch
hub folder, and folders of small PNG images."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from eval.tf_inception import TFInception


@pytest.fixture(scope="session")
def random_pth(tmp_path_factory):
    """A random state dict in the key layout of pytorch-fid's weight file, named as pytorch-fid
    names it: pt_inception-2015-12-05-<first 8 hex digits of its sha256>.pth."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    tmp = folder / "state.pth"
    torch.save(TFInception().state_dict(), tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(folder / f"pt_inception-2015-12-05-{sha[:8]}.pth")


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch.hub's folder pointed at an empty tmp folder for one test, through $TORCH_HOME: set_dir
    cannot be undone (putting back get_dir()'s old answer pins it, and later $TORCH_HOME is ignored)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub"


@pytest.fixture
def pngs():
    """`pngs(folder, n, size, channels=1, seed=0)`: n random uint8 PNGs (grey or RGB) in `folder`."""

    def write(folder, n: int, size: int, channels: int = 1, seed: int = 0):
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        images = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:03d}.png")
        return folder

    return write


@pytest.fixture
def held_elsewhere():
    """`held_elsewhere(path)`: another process takes vqgen's lock on the output file `path` (as a
    second `vqgen fid-ref` or `vqgen fid` would) and keeps it until the test ends."""
    holders = []
    code = ("import sys; from core.runs import OutputLock; OutputLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); sys.stdin.read()")

    def hold(path):
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        holders.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc.pid

    yield hold
    for proc in holders:
        proc.stdin.close()  # the holder exits, and the kernel drops its lock
        proc.wait(timeout=30)
