"""Streaming tests run with one intra-op thread (see the fixture)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread. On the shared 2-core machine two threads made a (1, 4, 3) conv1d
    take ~20 ms instead of ~3 us (measured); restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
