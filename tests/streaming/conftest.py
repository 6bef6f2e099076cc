"""Shared pieces of the streaming tests: the module zoo and the step-vs-forward check."""

from __future__ import annotations

import pytest
import torch

from elastic.streaming import StreamingModule


def stepped(module: StreamingModule, x: torch.Tensor) -> torch.Tensor | None:
    """Step a clip `(B, C, T, ...)` through `module` frame by frame; outputs stacked on dim 2."""
    state = module.init_state(x.shape[0], (x.shape[1], *x.shape[3:]))
    with torch.inference_mode():
        y, _ = module.steps(x, state)
    return y


def assert_steps_match_forward(module: StreamingModule, x: torch.Tensor, atol: float = 1e-5) -> None:
    """The stepped outputs equal the offline forward's first outputs, and there are as many as the geometry says."""
    module.eval()
    with torch.inference_mode():
        ref = module(x)
    y = stepped(module, x)
    steps = x.shape[2]
    expected = 0 if steps <= module.delay else (steps - 1 - module.delay) // module.temporal_stride + 1
    n = 0 if y is None else y.shape[2]
    assert n == expected, f"{n} outputs from {steps} steps, geometry says {expected}"
    assert n > 0, "the test clip is too short to produce any output"
    assert n <= ref.shape[2]
    torch.testing.assert_close(y, ref[:, :, :n], atol=atol, rtol=0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread. On the shared 2-core machine two threads made a (1, 4, 3) conv1d
    take ~20 ms instead of ~3 us (measured); restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
