import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions on a shared 2-core machine: OpenMP threads only fight each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
