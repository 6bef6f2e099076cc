"""Executors: how the engine runs one subnet on one batch.

The engine never calls the model itself; it hands a stacked batch and a subnet id to an
`Executor` (vLLM v1 keeps its executor apart from its scheduler the same way). Profiles are
measured through the executor in use, so the scheduler plans with the latencies the engine
will really see. `EagerExecutor` runs the model's own `forward`; other executors (compiled,
CUDA graphs, onnxruntime, a child process) keep their own per-(subnet, batch size) artefacts and prepare
them in `warmup`. Every executor must give the eager outputs (tests check it).
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Generator
from typing import Any

import torch

from elastic.builders.stages import StagedPieces, run_in_stages
from elastic.model import ElasticModel


class Executor(ABC):
    """Runs `subnet` of one elastic model on a batch, on one device.

    Args:
        model: the elastic model, already on `device` and in eval mode.
        device: where batches run; inputs arrive on the CPU or already there.
    """

    name: str = "executor"
    pausable: bool = False  # `run_stages` pauses at the model's stage boundaries

    def __init__(self, model: ElasticModel, device: str | torch.device = "cpu"):
        self.model = model
        self.device = torch.device(device)

    @abstractmethod
    def run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        """Logits of `subnet` on `x`, on `self.device`. The engine hands over only samples
        the runtime checked at submit (`check_input`): an executor need not check them
        again (the eager and process executors do not; onnxruntime's and the CUDA-graph
        one still do).

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """

    def run_stages(self, subnet: int, x: torch.Tensor) -> Generator[None, None, torch.Tensor]:
        """`run`, as a generator that yields at each stage boundary of the subnet
        (`ElasticModel.stage_fractions`) when the executor is `pausable`, and returns the
        logits. The caller enters inference mode around the whole loop. This default
        cannot pause: it yields nothing.

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        return self.run(subnet, x)
        yield  # unreachable: makes this a generator

    def warmup(self, subnet: int, batch: int) -> None:
        """Prepare (compile, capture, load) and run once for this (subnet, batch size)."""
        x = torch.zeros(batch, *self.model.input_size(), device=self.device)
        self.run(subnet, x)

    def close(self) -> None:  # noqa: B027 - a hook: most executors hold nothing to release
        """Release what the executor holds outside this process (a child, files); the
        runtime calls it on `close` for an executor it made from a name."""

    def synchronize(self) -> None:
        """Wait for the device: a timed `run` is bracketed by this on CUDA."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class EagerExecutor(Executor):
    """The model's own forward, in inference mode (entered only when the caller is not
    already in it: a serving loop that is pays nothing per batch).

    The runtime checks every sample when it is submitted (serving/admission.py), so a
    forward that can skip its own `check_input` (a `check` keyword, as the builders'
    `forward` and `forward_stages` have) is told to: the check is another pass over the
    batch, three torch ops (17 µs for a demo sample in a tight loop on the development CPU),
    and between forwards, with cold caches, such ops cost several times that. A forward
    without the keyword (an older model, or one patched after the runtime was built)
    checks as before.

    A builder's staged forward (`StagedPieces.forward_stages`) builds its stage functions
    (`stage_pieces`) anew for each batch, ~15 µs for a demo request: here they are built
    once per subnet and run directly, the same operations in the same order. The model's
    structure is fixed while it serves (its profile assumes no less). Any other
    `forward_stages` — another model's, or one patched in — runs as it is."""

    name = "eager"
    pausable = True

    def __init__(self, model: ElasticModel, device: str | torch.device = "cpu"):
        super().__init__(model, device)
        self._skips: dict[Any, dict[str, bool]] = {}  # forward function -> its keywords
        self._pieces: dict[int, list[Any]] = {}  # subnet -> its stage functions, built once

    def run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        if x.device != self.device:
            x = x.to(self.device, non_blocking=True)
        forward = self.model.forward
        if torch.is_inference_mode_enabled():
            return self.model(x, subnet=subnet, **self._skip_check(forward))
        with torch.inference_mode():
            return self.model(x, subnet=subnet, **self._skip_check(forward))

    def run_stages(self, subnet: int, x: torch.Tensor) -> Generator[None, None, torch.Tensor]:
        if x.device != self.device:
            x = x.to(self.device, non_blocking=True)
        staged = self.model.forward_stages
        if getattr(staged, "__func__", None) is StagedPieces.forward_stages:  # it runs `stage_pieces`
            pieces = self._pieces.get(subnet)
            if pieces is None:
                pieces = self._pieces[subnet] = self.model.stage_pieces(subnet)
            return (yield from run_in_stages(x, pieces))
        return (yield from staged(x, subnet=subnet, **self._skip_check(staged)))

    def _skip_check(self, method: Any) -> dict[str, bool]:
        """`{"check": False}` when `method` takes it, else `{}`; its signature is read once."""
        fn = getattr(method, "__func__", method)
        known = self._skips.get(fn)
        if known is None:
            known = self._skips[fn] = {"check": False} if takes_check(fn) else {}
        return known


def takes_check(fn: Any) -> bool:
    """Whether `fn` (a model's `forward` or `forward_stages`) takes `check=False` for an
    input that already passed `check_input`."""
    try:
        return "check" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


# executor name -> "module:Class"; a module registers more by adding to this table
EXECUTORS: dict[str, str] = {
    "eager": "elastic.serving.executor:EagerExecutor",
    "compiled": "elastic.serving.compiled_executor:CompiledExecutor",
    "traced": "elastic.serving.traced_executor:TracedExecutor",
    "traced_staged": "elastic.serving.traced_executor:StagedTracedExecutor",
    "onnxruntime": "elastic.serving.onnx_executor:OnnxRuntimeExecutor",
    "cuda_graphs": "elastic.serving.cuda_graph_executor:CUDAGraphExecutor",
    "process": "elastic.serving.process_executor:ProcessExecutor",
}


def make_executor(
    spec: str | Executor, model: ElasticModel, device: str | torch.device = "cpu", **options: Any
) -> Executor:
    """An executor from its name (see `EXECUTORS`) or an instance, which is returned as is.

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(spec, Executor):
        return spec
    return executor_class(spec)(model, device, **options)


def executor_class(name: str) -> type[Executor]:
    """The executor class registered as `name` in `EXECUTORS` (imported on first use).

    Raises:
        ValueError: an unknown name.
    """
    target = EXECUTORS.get(name) if isinstance(name, str) else None
    if target is None:
        raise ValueError(f"unknown executor {name!r}; use one of {sorted(EXECUTORS)} or an Executor")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
