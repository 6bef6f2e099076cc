"""`CompiledExecutor`: each subnet `torch.compile`d, per batch-size bucket.

A compiled graph is specialised to its input shape; compiling every batch size from 1 to
the maximum would cost one compilation each. Like TensorRT's optimisation profiles and
vLLM's CUDA-graph capture sizes, batches are padded up to the next size in a short list of
buckets (default 1, 2, 4, 8), so a subnet has at most one graph per bucket, and the rows of
the padding are dropped from the output. Rows of a vision model do not interact (LayerNorm
and attention are per sample, BatchNorm is frozen in eval), so the real rows equal the eager
forward; the tests check it for every executor. Batches above the largest bucket compile
for their exact size.

Dynamo keeps the graphs of one Python function in one cache with a recompile limit (8 by
default); a model with many subnets needs one entry per (subnet, bucket), so the executor
raises `torch._dynamo.config.recompile_limit` (process-wide) to fit.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence

import torch

from elastic.errors import ConfigError
from elastic.model import ElasticModel

from .executor import Executor

log = logging.getLogger(__name__)


class CompiledExecutor(Executor):
    """Runs each subnet through `torch.compile`, batches padded to the next bucket.

    Args:
        model: the elastic model, already on `device` and in eval mode.
        device: where batches run.
        backend: the `torch.compile` backend ("inductor"; "aot_eager" compiles fast and
            only checks tracing).
        mode: the `torch.compile` mode (e.g. "reduce-overhead" for CUDA graphs on a GPU).
        buckets: batch sizes graphs are made for; smaller batches are padded up.
        fullgraph: refuse graph breaks (an error instead of a partly eager forward).
    """

    name = "compiled"

    def __init__(
        self,
        model: ElasticModel,
        device: str | torch.device = "cpu",
        *,
        backend: str = "inductor",
        mode: str | None = None,
        buckets: Sequence[int] = (1, 2, 4, 8),
        fullgraph: bool = False,
    ):
        super().__init__(model, device)
        sizes = sorted({int(b) for b in buckets})
        if not sizes or sizes[0] < 1:
            raise ConfigError(f"buckets must be positive batch sizes, got {list(buckets)}")
        self.buckets = sizes
        self.backend = backend
        self.mode = mode
        self.fullgraph = fullgraph
        self._compiled: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
        import torch._dynamo.config as dynamo_config

        needed = len(model.subnets()) * (len(sizes) + 1) + 8
        if dynamo_config.recompile_limit < needed:
            dynamo_config.recompile_limit = needed
        if getattr(dynamo_config, "accumulated_recompile_limit", needed) < needed:
            dynamo_config.accumulated_recompile_limit = needed

    def bucket(self, batch: int) -> int:
        """The batch size `batch` runs at: the smallest bucket >= it, else itself."""
        i = bisect.bisect_left(self.buckets, batch)
        return self.buckets[i] if i < len(self.buckets) else batch

    def _forward(self, subnet: int) -> Callable[[torch.Tensor], torch.Tensor]:
        fn = self._compiled.get(subnet)
        if fn is None:
            model = self.model

            def forward(x: torch.Tensor, _subnet: int = subnet) -> torch.Tensor:
                return model(x, subnet=_subnet)

            fn = torch.compile(forward, backend=self.backend, mode=self.mode, fullgraph=self.fullgraph, dynamic=False)
            self._compiled[subnet] = fn
        return fn

    @torch.inference_mode()
    def run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        b = x.shape[0]
        padded = self.bucket(b)
        if padded != b:
            x = torch.cat([x, x.new_zeros((padded - b, *x.shape[1:]))])
        y = self._forward(subnet)(x)
        return y[:b] if padded != b else y

    def warmup(self, subnet: int, batch: int) -> None:
        """Compile (subnet, bucket of `batch`) and run it once."""
        x = torch.zeros(self.bucket(batch), *self.model.input_size(), device=self.device)
        self.run(subnet, x)
