"""`CUDAGraphExecutor`: one captured CUDA graph per (subnet, batch bucket).

On a GPU an eager forward of a small subnet is bound by Python and kernel launches, not by
its FLOPs: on an H200, eager DeiT subnets at batch 1 took 3.4-7 ms whatever their cost
(2.3-35 GFLOPs), so a cheaper subnet bought no latency (issue 16). A CUDA graph (Nvidia's
CUDA Graphs; `torch.cuda.CUDAGraph`) records a forward's kernels once and replays them with
one launch, which is what makes the accuracy-latency trade-off of an elastic model
(SN-Net, Pan et al., CVPR 2023) visible at small batch.

A graph has fixed shapes and addresses, so each (subnet, bucket) owns a static input buffer
and the output tensor its capture produced. Batches are padded up to the smallest bucket that
holds them (vLLM's CUDA-graph capture sizes, TensorRT's optimisation profiles); rows of a
vision model do not interact in eval mode, so the real rows equal the eager forward, and the
padding rows are dropped. `run` copies the batch into the buffer, replays, and returns a copy
of the real rows (the buffer is overwritten by the next replay).

Graphs are captured in `warmup` (which the profiler calls for every (subnet, batch size) it
measures), never on the request path: a (subnet, bucket) without a graph runs eagerly. All
graphs share one memory pool. Capture is refused past `memory_budget_bytes`: before each
capture the eager forward's peak activation memory is measured, and a capture that would take
the executor past its budget is skipped (logged; `GraphBudgetExceeded` with `strict=True`),
and that (subnet, bucket) runs eagerly. Batches above the largest bucket run eagerly too.

The model's own input check reads the input's values (`torch.isfinite(x).all()`), a host
sync that a capture cannot contain; `run` checks each real batch on its way in (on the CPU
when it arrives there, so without a device sync) and the captured forward skips the check.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from elastic.errors import ConfigError
from elastic.model import ElasticModel

from .executor import Executor

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_MEMORY_BUDGET_BYTES = 4 << 30  # 4 GiB of graph memory per executor


class GraphBudgetExceeded(ConfigError):
    """Capturing another graph would take the executor past its memory budget."""


def bucket_for(batch: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds `batch` rows, or None when it exceeds every bucket.

    Args:
        batch: rows in the batch, >= 1.
        buckets: sorted, positive batch sizes.
    """
    if batch < 1:
        raise ValueError(f"a batch has at least one row, got {batch}")
    i = bisect.bisect_left(buckets, batch)
    return buckets[i] if i < len(buckets) else None


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """The buckets sorted and deduplicated; `ConfigError` unless all are positive integers."""
    try:
        sizes = sorted({int(b) for b in buckets})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"buckets must be positive batch sizes, got {buckets!r}") from e
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"buckets must be positive batch sizes, got {list(buckets)}")
    return tuple(sizes)


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """`x` with zero rows appended up to `rows` (x itself when it has that many).

    Shape:
        x: (B, ...) -> (rows, ...), rows >= B
    """
    b = x.shape[0]
    if rows < b:
        raise ValueError(f"cannot pad {b} rows down to {rows}")
    if rows == b:
        return x
    return torch.cat([x, x.new_zeros((rows - b, *x.shape[1:]))])


@dataclass
class CapturedGraph:
    """One (subnet, bucket)'s graph and the buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph  # the recorded forward
    static_input: torch.Tensor  # (bucket, C, H, W): `run` copies each batch here
    static_output: torch.Tensor  # (bucket, num_classes): written by every replay
    memory_bytes: int  # device memory this capture added (pool growth + buffers)


@contextlib.contextmanager
def _input_check_skipped(model: ElasticModel) -> Iterator[None]:
    """The model's `check_input` (a host sync) replaced by a no-op on this instance, for capture."""
    model.__dict__["check_input"] = lambda x: None
    try:
        yield
    finally:
        model.__dict__.pop("check_input", None)


class CUDAGraphExecutor(Executor):
    """Replays one CUDA graph per (subnet, batch bucket), captured in `warmup`.

    Args:
        model: the elastic model, already on `device` and in eval mode.
        device: a CUDA device.
        buckets: batch sizes graphs are captured for; smaller batches are padded up.
        memory_budget_bytes: the most device memory all captured graphs may hold together
            (pool and buffers); a capture that would pass it is refused and runs eagerly.
        warmup_iters: eager forwards on a side stream before each capture (cuDNN / cuBLAS
            workspaces, the Triton kernels' autotuning) so that the capture records no setup.
        strict: raise `GraphBudgetExceeded` instead of falling back to eager.
        dtype: the input dtype of the static buffers (default: the model's parameters').

    Raises:
        ConfigError: no CUDA device, a non-CUDA `device`, bad buckets or budget.
    """

    name = "cuda_graphs"

    def __init__(
        self,
        model: ElasticModel,
        device: str | torch.device = "cuda",
        *,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        warmup_iters: int = 3,
        strict: bool = False,
        dtype: torch.dtype | None = None,
    ):
        if torch.device(device).type != "cuda":
            raise ConfigError(f"CUDAGraphExecutor runs on a CUDA device, not {str(device)!r} (use 'eager' there)")
        if not torch.cuda.is_available():
            raise ConfigError("CUDAGraphExecutor needs a CUDA device and torch finds none (use 'eager' or 'compiled')")
        super().__init__(model, device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.buckets = check_buckets(buckets)
        if memory_budget_bytes <= 0:
            raise ConfigError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.warmup_iters = max(1, int(warmup_iters))
        self.strict = strict
        self.dtype = dtype or next((p.dtype for p in model.parameters()), torch.float32)
        self.graphs: dict[tuple[int, int], CapturedGraph] = {}
        self.refused: dict[tuple[int, int], str] = {}  # (subnet, bucket) -> why it runs eagerly
        self._pool = torch.cuda.graph_pool_handle()
        self._logged: set[tuple[int, int]] = set()

    @property
    def memory_bytes(self) -> int:
        """Device memory held by the captured graphs (measured at capture)."""
        return sum(g.memory_bytes for g in self.graphs.values())

    def bucket(self, batch: int) -> int | None:
        """The bucket `batch` runs at, or None (eager) past the largest."""
        return bucket_for(batch, self.buckets)

    # ---- capture ---------------------------------------------------------------------
    def warmup(self, subnet: int, batch: int) -> None:
        """Capture the graph of (subnet, bucket of `batch`) if it has none, and replay it once.

        Raises:
            GraphBudgetExceeded: with `strict=True`, when the capture would pass the budget.
        """
        bucket = self.bucket(batch)
        if bucket is None:  # past the largest bucket: eager, as `run` will do
            super().warmup(subnet, batch)
            return
        key = (subnet, bucket)
        if key not in self.graphs and key not in self.refused:
            self._capture(subnet, bucket)
        x = torch.zeros(batch, *self.model.input_size(), device=self.device, dtype=self.dtype)
        self.run(subnet, x)

    @torch.inference_mode()
    def _eager_forward(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, subnet=subnet)

    def _capture(self, subnet: int, bucket: int) -> None:
        key = (subnet, bucket)
        static_input = torch.zeros(bucket, *self.model.input_size(), device=self.device, dtype=self.dtype)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        with torch.cuda.stream(side):
            for _ in range(self.warmup_iters):
                self._eager_forward(subnet, static_input)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        estimate = max(0, torch.cuda.max_memory_allocated(self.device) - base) + static_input.nbytes
        if self.memory_bytes + estimate > self.memory_budget_bytes:
            why = (
                f"capturing subnet {subnet} at batch {bucket} needs about {estimate / 2**20:.1f} MiB; "
                f"the graphs hold {self.memory_bytes / 2**20:.1f} MiB of a "
                f"{self.memory_budget_bytes / 2**20:.1f} MiB budget"
            )
            if self.strict:
                raise GraphBudgetExceeded(why)
            log.warning("CUDA graphs: %s: it runs eagerly", why)
            self.refused[key] = why
            return
        torch.cuda.empty_cache()  # so that the pool's growth is all `reserved` grows by
        reserved = torch.cuda.memory_reserved(self.device)
        graph = torch.cuda.CUDAGraph()
        with _input_check_skipped(self.model), torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            static_output = self.model(static_input, subnet=subnet)
        torch.cuda.synchronize(self.device)
        grown = max(0, torch.cuda.memory_reserved(self.device) - reserved)
        self.graphs[key] = CapturedGraph(graph, static_input, static_output, grown + static_input.nbytes)
        log.info(
            "CUDA graphs: captured subnet %d at batch %d (%.1f MiB; %.1f MiB in all)",
            subnet,
            bucket,
            self.graphs[key].memory_bytes / 2**20,
            self.memory_bytes / 2**20,
        )

    # ---- run -------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        """Logits of `subnet` on `x`: a graph replay when (subnet, bucket) has one, else eager.

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        self.model.check_input(x)  # on the CPU when x arrives there: no device sync
        b = x.shape[0]
        bucket = self.bucket(b)
        captured = self.graphs.get((subnet, bucket)) if bucket is not None else None
        if captured is None:
            self._log_eager(subnet, b, bucket)
            return self._eager_forward(subnet, x.to(self.device, self.dtype, non_blocking=True))
        static = captured.static_input
        static[:b].copy_(x, non_blocking=True)
        if b < bucket:
            static[b:].zero_()  # padding rows: deterministic, and rows do not interact
        captured.graph.replay()
        return captured.static_output[:b].clone()

    def _log_eager(self, subnet: int, batch: int, bucket: int | None) -> None:
        key = (subnet, bucket or batch)
        if key in self._logged:
            return
        self._logged.add(key)
        if bucket is None:
            why = f"batch {batch} is past the largest bucket {self.buckets[-1]}"
        else:
            why = self.refused.get((subnet, bucket), "no graph was captured (call warmup first)")
        log.info("CUDA graphs: subnet %d at batch %d runs eagerly: %s", subnet, batch, why)
