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


@pytest.fixture(autouse=True)
def private_stats_cache(tmp_path_factory, monkeypatch):
    # vqgen caches Inception statistics per user ($VQGEN_CACHE, eval/cache.py): no test reads or
    # fills the real ~/.cache/vqgen, and none sees another test's entries.
    monkeypatch.setenv("VQGEN_CACHE", str(tmp_path_factory.mktemp("vqgen-cache")))


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions and matmuls: a second OpenMP thread costs more than it gives, and on a
    # shared 2-core machine threads that spin against other processes made steps 10x slower.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    """A port nobody listens on now (other runs may share the machine; port 0 breaks gloo)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cpu_launch():
    """`cpu_launch(n)`: the command prefix that starts n CPU processes under `accelerate launch`
    (gloo). `--cpu --num_processes 2` would silently start one, hence --multi_gpu with ACCELERATE_USE_CPU."""
    import sys

    def command(num_processes: int = 2) -> list[str]:
        return ["env", "ACCELERATE_USE_CPU=1", "OMP_NUM_THREADS=1", sys.executable, "-m", "accelerate.commands.launch",
                "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]

    return command
