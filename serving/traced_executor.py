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
that subnet runs eagerly from then on. The traced graph runs as one call, so a batch cannot
pause at block boundaries (`pausable` is False).

`torch.jit.trace` is deprecated in favour of `torch.compile` and `torch.export`; it is what
runs a whole forward without the interpreter lock here, with no compiler in the loop (the
`compiled` executor's C++ takes about half a minute per graph on two cores). Its
deprecation warning is silenced inside `trace` only.

Use it as `Runtime(model, executor="traced")`.
"""

from __future__ import annotations

import logging
import threading
import warnings

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
    pausable = False

    def __init__(self, model: ElasticModel, device: str | torch.device = "cpu", *, trace_batch: int = 2):
        super().__init__(model, device)
        if not hasattr(torch.jit, "trace"):
            raise ConfigError("this torch has no torch.jit.trace: use the eager or compiled executor")
        if trace_batch < 1:
            raise ConfigError(f"trace_batch must be >= 1, got {trace_batch}")
        self.trace_batch = trace_batch
        self._graphs: dict[int, nn.Module] = {}  # subnet id -> its graph, or its eager module
        self._checked: set[tuple[int, int]] = set()  # (subnet, batch size) compared with eager
        self.untraceable: set[int] = set()  # subnets whose graph differed from eager: run eagerly
        self._lock = threading.Lock()

    def trace(self, subnet: int) -> nn.Module:
        """The subnet's graph, traced on first call (under a lock: one trace per subnet)."""
        sid = self.model.subnet(subnet).id
        graph = self._graphs.get(sid)
        if graph is not None:
            return graph
        with self._lock:
            if sid not in self._graphs:
                module = _Subnet(self.model, sid).eval()
                param = next(self.model.parameters(), None)
                dtype = param.dtype if param is not None else torch.get_default_dtype()
                x = torch.zeros(self.trace_batch, *self.model.input_size(), device=self.device, dtype=dtype)
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # the deprecation (module docstring)
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape asserts baked in
                    self._graphs[sid] = torch.jit.trace(module, x, check_trace=False)
                log.info("traced subnet %d", sid)
            return self._graphs[sid]

    def run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled():  # the engine's steps already are: entering again costs ~2 µs
            return self._run(subnet, x)
        with torch.inference_mode():
            return self._run(subnet, x)

    def _run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        if x.device != self.device:
            x = x.to(self.device, non_blocking=True)
        graph = self._graphs.get(subnet)
        if graph is None:
            graph = self.trace(subnet)
        if (subnet, x.shape[0]) not in self._checked and subnet not in self.untraceable:
            return self._first_run(subnet, graph, x)
        return graph(x)  # an untraceable subnet's entry is its eager module: nothing to compare

    def _first_run(self, subnet: int, graph: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The first batch of its size on `subnet`: run traced and eagerly, and keep the
        graph only when the two agree (else run that subnet eagerly from now on)."""
        sid = self.model.subnet(subnet).id
        y = graph(x)
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
                self._graphs[sid] = _Subnet(self.model, sid)
                self.untraceable.add(sid)
            y = expected
        self._checked.add((subnet, x.shape[0]))
        return y
