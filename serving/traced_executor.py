"""`TracedExecutor`: each subnet's forward traced once to a TorchScript graph.

An eager forward is a Python loop over modules: on the demo's small ViTs most of its time is
the interpreter's, and it releases and retakes the interpreter lock at every operator, so a
thread that runs Python meanwhile (the one that submits requests) takes the lock in between
and the forward waits for it each time (docs/serving.md, "Off the interpreter lock"). A
traced graph runs in TorchScript's C++ interpreter: one call, made without the lock. On the
development machine a demo anchor's forward took a third of its eager time, and beside a
busy Python thread it slowed down by less than 3× where the eager one slowed down 17×
(`elastic bench contention`).

Each subnet is traced on first use (or warm-up) with `torch.jit.trace`, at a batch of
`trace_batch` rows; the graph keeps the batch axis symbolic, and the module's parameters
are shared with the model, not copied. A trace records one path through the Python
control flow, so the first batch of every size a subnet runs is also run eagerly and
compared: a graph that does not reproduce the eager forward is dropped, with a warning, and
that subnet runs eagerly from then on. `warmup(subnet, b)` makes those checks for every
size up to b, so that a runtime's warm-up (batch 1 and its largest) leaves none for live
batches. The traced graph runs as one call, so a batch cannot
pause at block boundaries (`pausable` is False). `StagedTracedExecutor` ("traced_staged")
traces one graph per stage instead (`ElasticModel.stage_pieces`), chained, so a batch can
pause between two for urgent requests, at the price of a graph call per boundary.

`torch.jit.trace` is deprecated in favour of `torch.compile` and `torch.export`; it is what
runs a whole forward without the interpreter lock here, with no compiler in the loop (the
`compiled` executor's C++ takes about half a minute per graph on two cores). Its
deprecation warning is silenced inside `trace` only.

Use it as `Runtime(model, executor="traced")` or `executor="traced_staged"`.
"""

from __future__ import annotations

import logging
import threading
import types
import warnings
from collections.abc import Callable, Generator

import torch
from torch import nn

from elastic.errors import ConfigError
from elastic.model import ElasticModel

from .executor import Executor, takes_check

log = logging.getLogger(__name__)

ATOL = 1e-5  # largest |traced - eager| tolerated on a subnet's first batch of each size
RTOL = 1e-5


class _Subnet(nn.Module):
    """One subnet of an elastic model as a module of the input alone (what `trace` records)."""

    def __init__(self, model: ElasticModel, subnet: int):
        super().__init__()
        self.model = model
        self.subnet = subnet
        self.skip_check = takes_check(type(model).forward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip_check:
            return self.model(x, subnet=self.subnet, check=False)
        return self.model(x, subnet=self.subnet)


class _Stages(nn.Module):
    """A subnet's pieces as the methods `stage0`, `stage1`, ... of one module that holds the
    model, so that `trace_module` traces them all in one pass over the model's module tree
    (a `trace` per piece walked the whole tree each time: six stages of a demo subnet took
    3.6 s against 0.6), and each traced method reads the model's own parameters."""

    def __init__(self, model: ElasticModel, pieces: list[Callable[[torch.Tensor], torch.Tensor]]):
        super().__init__()
        self.model = model
        for k, piece in enumerate(pieces):
            setattr(self, f"stage{k}", types.MethodType(lambda self, x, piece=piece: piece(x), self))


class TracedExecutor(Executor):
    """Runs each subnet as a TorchScript graph traced from its eager forward.

    Args:
        model: the elastic model, already on `device` and in eval mode.
        device: where batches run.
        trace_batch: rows of the example batch a subnet is traced at (2: not 1, so that no
            size-1 batch axis is mistaken for a constant).

    Raises:
        ConfigError: this torch has no `torch.jit.trace`, or `trace_batch` < 1.
    """

    name = "traced"
    pausable = False  # one graph per subnet (`StagedTracedExecutor`: one per stage)

    def __init__(self, model: ElasticModel, device: str | torch.device = "cpu", *, trace_batch: int = 2):
        super().__init__(model, device)
        if not hasattr(torch.jit, "trace"):
            raise ConfigError("this torch has no torch.jit.trace: use the eager or compiled executor")
        if trace_batch < 1:
            raise ConfigError(f"trace_batch must be >= 1, got {trace_batch}")
        self.trace_batch = trace_batch
        self._graphs: dict[int, list[Callable]] = {}  # subnet id -> its graphs in order, or its eager module
        self._checked: set[tuple[int, int]] = set()  # (subnet, batch size) compared with eager
        self.untraceable: set[int] = set()  # subnets that run eagerly (a graph differed, or no stages listed)
        self._lock = threading.Lock()

    def trace(self, subnet: int) -> list[Callable]:
        """The subnet's graphs in the order they run (`pieces`), traced on first call (under
        a lock: one trace per subnet)."""
        sid = self.model.subnet(subnet).id
        graphs = self._graphs.get(sid)
        if graphs is not None:
            return graphs
        with self._lock:
            if sid not in self._graphs:
                pieces = self.pieces(sid)
                if pieces is None:
                    log.warning("the model lists no stage pieces for subnet %d; running it eagerly", sid)
                    self._graphs[sid] = [_Subnet(self.model, sid)]
                    self.untraceable.add(sid)
                else:
                    self._graphs[sid] = self._trace(pieces)
                    log.info("traced subnet %d (%d graph%s)", sid, len(pieces), "s" * (len(pieces) > 1))
            return self._graphs[sid]

    def pieces(self, subnet: int) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
        """What is traced for `subnet`, one graph each, in the order they run: the whole
        forward; with `pausable`, one function per stage (`ElasticModel.stage_pieces`), or
        None when the model does not list them for a subnet that can pause."""
        boundaries = len(self.model.stage_fractions(subnet)) if self.pausable else 0
        if not boundaries:
            return [_Subnet(self.model, subnet).eval()]
        stages = self.model.stage_pieces(subnet)
        return stages if stages is not None and len(stages) == boundaries + 1 else None

    def _trace(self, pieces: list[Callable[[torch.Tensor], torch.Tensor]]) -> list[Callable]:
        """One graph per piece, each traced on the output of the one before (run eagerly)."""
        param = next(self.model.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        x = torch.zeros(self.trace_batch, *self.model.input_size(), device=self.device, dtype=dtype)
        inputs = {}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecation (module docstring)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape asserts baked in
            for k, piece in enumerate(pieces):
                inputs[f"stage{k}"] = x
                if k + 1 < len(pieces):
                    x = piece(x)
            traced = torch.jit.trace_module(_Stages(self.model, pieces).eval(), inputs, check_trace=False)
        return [getattr(traced, name) for name in inputs]

    def warmup(self, subnet: int, batch: int) -> None:
        """Trace `subnet` and check its graphs against the eager forward at every batch size
        up to `batch`, each on a random batch, run twice (TorchScript profiles a graph's
        first run at a size): else the first live batch of each size would pay the eager
        comparison and the profiling, 4-5x its time on the demo model, where no prediction
        expects it."""
        param = next(self.model.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        generator = torch.Generator().manual_seed(0)
        for b in range(1, batch + 1):
            x = torch.randn(b, *self.model.input_size(), generator=generator, dtype=dtype).to(self.device)
            for _ in range(1 if (subnet, b) in self._checked else 2):
                self.run(subnet, x)

    def run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled():  # the engine's steps already are: entering again costs ~2 µs
            return self._run(subnet, x)
        with torch.inference_mode():
            return self._run(subnet, x)

    def _run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        if x.device != self.device:
            x = x.to(self.device, non_blocking=True)
        graphs = self._graphs.get(subnet)
        if graphs is None:
            graphs = self.trace(subnet)
        y = x
        for graph in graphs:
            y = graph(y)
        if (subnet, x.shape[0]) not in self._checked and subnet not in self.untraceable:
            return self._agreed(subnet, x, y)
        return y  # an untraceable subnet's entry is its eager module: nothing to compare

    def run_stages(self, subnet: int, x: torch.Tensor) -> Generator[None, None, torch.Tensor]:
        """`run`, yielding between two stage graphs (eagerly, `forward_stages`, for an
        untraceable subnet). The caller enters inference mode around the whole loop."""
        if x.device != self.device:
            x = x.to(self.device, non_blocking=True)
        graphs = self._graphs.get(subnet)
        if graphs is None:
            graphs = self.trace(subnet)
        if subnet in self.untraceable:
            staged = self.model.forward_stages
            skip = {"check": False} if takes_check(type(self.model).forward_stages) else {}
            return (yield from staged(x, subnet, **skip))
        y = graphs[0](x)
        for graph in graphs[1:]:
            yield
            y = graph(y)
        if (subnet, x.shape[0]) not in self._checked:
            return self._agreed(subnet, x, y)
        return y

    def _agreed(self, subnet: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The first batch of its size on `subnet`, `y` from its graphs: compared with the
        eager forward on `x`, and the graphs kept only when the two agree (else the subnet
        runs eagerly from now on). Returns the output to answer with."""
        sid = self.model.subnet(subnet).id
        expected = _Subnet(self.model, sid)(x)
        if y.shape != expected.shape or not torch.allclose(y, expected, atol=ATOL, rtol=RTOL):
            diff = float((y - expected).abs().max()) if y.shape == expected.shape else float("inf")
            log.warning(
                "the traced graph of subnet %d differs from its eager forward on a batch of %d (max abs diff %.2e);"
                " running it eagerly",
                sid,
                x.shape[0],
                diff,
            )
            with self._lock:
                self._graphs[sid] = [_Subnet(self.model, sid)]
                self.untraceable.add(sid)
            y = expected
        self._checked.add((subnet, x.shape[0]))
        return y


class StagedTracedExecutor(TracedExecutor):
    """`TracedExecutor` with one graph per stage of a subnet (`ElasticModel.stage_pieces`),
    so that a batch can pause at the stage boundaries for urgent requests (the runtime's
    preemption), as eager batches do. Every batch runs through the stage graphs, paused or
    not, so a profile measures what runs; each boundary costs one more graph call
    (`elastic bench onnx` times both). A subnet the model lists no stage pieces for runs
    eagerly, pausing where `forward_stages` does.

    Use it as `Runtime(model, executor="traced_staged")`.
    """

    name = "traced_staged"
    pausable = True
