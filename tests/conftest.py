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
