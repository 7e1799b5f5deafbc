"""Every deep CT test runs torch on one thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread: reproducible sums, and no spinning threads fighting over 2 shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
