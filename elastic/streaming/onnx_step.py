"""Export one continual step to ONNX, with the batch axis of every state tensor dynamic.

continual-inference 1.2.4's exporter marks dim 0 of each state tensor as the batch, though
some of its buffers are `(delay, B, ...)` (Hedegaard & Iosifidis, 2022). Here every state
leaf is batch first by contract (`base.py`), so the exported graph
`(x, *state) -> (y, valid, *new_state)` takes any number of streams, e.g. a `StreamSet`'s
gathered rows served by onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from elastic.errors import ExportError

from .base import StreamingModule


class StepGraph(nn.Module):
    """`step_masked` with the state flattened into tensors: `(x, *state) -> (y, valid, *new_state)`."""

    def __init__(self, module: StreamingModule, spec: TreeSpec) -> None:
        super().__init__()
        self.module = module
        self.spec = spec

    def forward(self, x: Tensor, *leaves: Tensor) -> tuple[Tensor, ...]:
        y, valid, state = self.module.step_masked(x, tree_unflatten(list(leaves), self.spec), None)
        if valid is None:
            valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return (y, valid, *tree_flatten(state)[0])


def export_step_onnx(module: StreamingModule, frame_shape: Sequence[int], path: str | Path) -> list[str]:
    """Write `module`'s step as an ONNX graph whose inputs all have a dynamic batch dim 0.

    Inputs are named `x`, `state_0`, `state_1`, ... (the state's leaves in `tree_flatten`
    order of `module.init_state`); outputs `y`, `valid`, `new_state_0`, ...

    Returns:
        The state input names.

    Raises:
        ExportError: torch.onnx could not export the step.
    """
    from elastic.checkpoint import atomic_write

    module = module.eval()
    leaves, spec = tree_flatten(module.init_state(2, frame_shape))
    x = torch.zeros(2, *frame_shape, dtype=_frame_dtype(module, leaves))
    batch = torch.export.Dim("batch", min=1, max=65536)
    names = [f"state_{i}" for i in range(len(leaves))]
    try:
        program = torch.onnx.export(
            StepGraph(module, spec),
            (x, *leaves),
            input_names=["x", *names],
            output_names=["y", "valid", *(f"new_{n}" for n in names)],
            dynamic_shapes=({0: batch}, tuple({0: batch} for _ in leaves)),
            dynamo=True,
            verbose=False,
        )
    except Exception as e:
        raise ExportError(f"exporting {type(module).__name__}'s step failed: {e}") from e
    atomic_write(Path(path), program.model_proto.SerializeToString())
    return names


def _frame_dtype(module: nn.Module, leaves: list[Tensor]) -> torch.dtype:
    """The dtype frames come in: the first floating-point state leaf's (a step counter is an
    integer leaf, not a frame), else the module's parameters', else float32."""
    for t in (*leaves, *module.parameters()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32
