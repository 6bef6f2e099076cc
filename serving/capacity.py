"""What one subnet sustains end to end through the runtime: the yardstick for offered load.

A latency profile times forwards alone; a served request also pays for validation, the
queue, the hand-off to the worker, batching and slicing its answer, which for small models
costs as much as the forward itself. Offered loads and budgets are therefore set against
what the runtime really sustains: a closed burst of requests (no budget) at one static
subnet gives its throughput, and single requests in a row give its batch-1 latency.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from elastic.model import ElasticModel

from .profile import LatencyProfile
from .runtime import Runtime


@dataclass(frozen=True)
class ServedCapacity:
    """End-to-end throughput and latency of one subnet through a `Runtime`."""

    subnet: int  # the static subnet measured
    throughput_per_s: float  # requests per second under a saturating burst
    batch1_ms: float  # median end-to-end latency of one request alone
    mean_batch: float  # batch size the runtime formed under the burst
    per_request_ms: float = 0.0  # the runtime's own cost per request, as its engine fitted it
    per_batch_ms: float = 0.0  # the runtime's own cost per batch, likewise


def served_capacity(
    model: ElasticModel,
    example: torch.Tensor,
    subnet: int,
    profile: LatencyProfile,
    max_batch_size: int = 8,
    burst: int = 256,
    singles: int = 30,
) -> ServedCapacity:
    """Measure `subnet`'s served throughput (a burst of `burst` requests) and batch-1 latency.

    Shape:
        example: (C, H, W), one sample.
    """
    with (
        torch.inference_mode(),
        Runtime(model, max_batch_size=max_batch_size, policy=f"static:{subnet}", profile=profile) as rt,
    ):
        for _ in range(5):
            rt.infer(example, math.inf)
        single = []
        for _ in range(singles):
            single.append(rt.infer(example, math.inf).latency_ms)
        t0 = time.perf_counter()
        futures = [rt.submit(example, math.inf) for _ in range(burst)]
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - t0
        # once the oldest observation the latency model keeps is `refit_ms` old, the next
        # admission folds them all, the burst's included (serving/refit.py)
        time.sleep(rt.refit_ms / 1e3)
        rt.infer(example, math.inf)
        overhead = rt.scheduler.overhead
    return ServedCapacity(
        subnet,
        burst / elapsed,
        statistics.median(single),
        statistics.fmean(r.batch_size for r in results),
        overhead.per_request_ms,
        overhead.per_batch_ms,
    )


def budget_range(
    profile: LatencyProfile,
    fastest: int,
    largest: int,
    per_request_ms: float = 0.0,
    per_batch_ms: float = 0.0,
    max_batch_size: int = 8,
) -> tuple[float, float]:
    """Budgets from barely feasible to relaxed, in ms: 2× a lone request's service on the
    `fastest` subnet, to 4× a full batch's service on the `largest` (and at least 2× the
    lower end). A service is the profile's median forward plus the runtime's own cost around
    it (`per_batch_ms + per_request_ms × batch`, as the engine fits it).

    Raises:
        KeyError: a subnet the profile does not hold.
    """

    def service_ms(subnet: int, batch: int) -> float:
        return profile.latency_ms(subnet, batch, "p50") + per_batch_ms + per_request_ms * batch

    lo = 2.0 * service_ms(fastest, 1)
    return lo, max(2.0 * lo, 4.0 * service_ms(largest, max_batch_size))
