"""Fixtures of the attack tests."""

from __future__ import annotations

import pytest
import torch
from attack_toys import toy_sliceset

from benchmark import SliceSet


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def toy() -> SliceSet:
    return toy_sliceset()
