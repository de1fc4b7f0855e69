"""Fixtures shared by the test files."""

import pytest
import torch


@pytest.fixture
def float64_default():
    """Oracle comparisons in float64, so that only real differences show."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def one_thread():
    """One intra-op thread: many small forward passes, which threads only slow down on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
