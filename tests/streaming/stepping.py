"""The step-vs-forward check shared by the streaming tests (imported as `stepping`; conftest names collide)."""

from __future__ import annotations

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
