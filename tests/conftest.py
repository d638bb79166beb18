"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def small_cpu_work(monkeypatch):
    """Settings for tiny tensors on a shared CPU: oneDNN spends ~1 s building kernels for each new
    conv shape, and a second thread mostly waits for a busy core; restored after each test."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
