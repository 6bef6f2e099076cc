"""The load suite's calibration: what one scenario measures before its load runs — the
latency profiles (the model's and the INFaaS-style baseline's), the served capacity of the
largest and the smallest anchor driven as the load runs drive the runtime
(`served_open_loop`), the runtime's fitted per-request / per-batch cost, and the budget
range derived from them (`elastic.serving.budget_range`). `bench/load.py` runs the loads.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import wait
from dataclasses import dataclass
from typing import Any

import torch

from elastic.serving import Runtime, ServedCapacity, budget_range
from elastic.serving.executor import Executor
from elastic.serving.profile import LatencyProfile

from .arrivals import BudgetDistribution
from .bounds import no_queue_bound
from .scenarios import Scenario
from .simulate import ServiceModel

log = logging.getLogger(__name__)

MAX_BATCH = 8
BATCH_WAIT_MS = 1.0  # the runtime's default: a partial batch may wait this long to fill
BATCH_SIZES = (1, 2, 4, 8)


@dataclass
class Calibration:
    """What one scenario measured before its load runs."""

    profile: LatencyProfile  # the model's, measured here
    candidates: list[int]  # the elastic front (fastest first)
    variants_profile: LatencyProfile  # the INFaaS-style baseline's
    smallest: int  # smallest anchor
    largest: int  # largest anchor: its served capacity is 1× load
    capacity_per_s: float  # the largest anchor's served throughput
    smallest_capacity_per_s: float  # the smallest anchor's
    budgets: BudgetDistribution
    service: ServiceModel  # for the simulation
    variants_service: ServiceModel
    served: dict[str, Any]  # raw served-capacity measurements
    seconds: float  # how long calibrating took
    bound: dict[str, Any] | None = None  # `no_queue_bound` over the statics (set by `calibrate`)
    accuracy: dict[int, float] | None = None  # the statics' accuracies (set by `calibrate`)

    @property
    def middle_range(self) -> tuple[float, float]:
        """Loads (× capacity) where the largest anchor cannot keep up but the smallest can."""
        return 1.0, self.smallest_capacity_per_s / self.capacity_per_s

    def in_middle(self, load: float) -> bool:
        lo, hi = self.middle_range
        return lo < load <= hi

    def real_loads(self, grid: Sequence[float]) -> list[float]:
        """`grid`, plus the middle of the measured middle range when no grid point lies in it.

        Where the middle range falls depends on the machine (the demo's smallest anchor served
        2x its largest's rate on one machine, 1.3x on another): a fixed grid can miss it, and
        with it the one target that needs it (+5 points). The added point is rounded to 0.01x.
        """
        loads = sorted(set(grid))
        lo, hi = self.middle_range
        if hi > lo and not any(self.in_middle(x) for x in loads):
            loads = sorted({*loads, round((lo + hi) / 2, 2)})
        return loads

    def statics(self) -> list[int]:
        """Every static contender: the front, plus the two anchors if they are off it."""
        return sorted(set(self.candidates) | {self.smallest, self.largest}, key=self.candidates_order)

    def candidates_order(self, sid: int) -> float:
        return self.profile.latency_ms(sid, 1, "p50")

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "smallest_anchor": self.smallest,
            "largest_anchor": self.largest,
            "capacity_per_s": self.capacity_per_s,
            "smallest_capacity_per_s": self.smallest_capacity_per_s,
            "middle_range": list(self.middle_range),
            "budgets": self.budgets.describe(),
            "budget_bounds_ms": [self.budgets.lo_ms, self.budgets.hi_ms],
            "overhead_ms": {"per_request": self.service.per_request_ms, "per_batch": self.service.per_batch_ms},
            "served": self.served,
            "profile_p50_ms": {str(s): row for s, row in self.profile.p50_ms.items()},
            "profile_p99_ms": {str(s): row for s, row in self.profile.p99_ms.items()},
            "accuracy": None if self.accuracy is None else {str(s): v for s, v in self.accuracy.items()},
            "no_queue_bound": None
            if self.bound is None
            else {**self.bound, "static": {str(s): v for s, v in self.bound["static"].items()}},
            "seconds": self.seconds,
        }


def calibrate(scenario: Scenario, profile_repeats: int | None = None) -> Calibration:
    """Profile the scenario's model and its baseline, and measure served capacities and overhead."""
    from elastic.serving.profiler import measure_latency

    t0 = time.perf_counter()
    model, example = scenario.model, scenario.images[0]
    repeats = profile_repeats or scenario.profile_repeats
    variants = scenario.variants()
    executor = scenario.executor_for(model)
    # through the executor the runtime serves with, as `Runtime.profile` does
    profile = measure_latency(
        model, example, BATCH_SIZES, repeats=repeats, subnets=scenario.profile_subnets, executor=executor
    )
    variants_profile = measure_latency(
        variants, example, BATCH_SIZES, repeats=repeats, executor=scenario.executor_for(variants)
    )
    with Runtime(model, max_batch_size=MAX_BATCH, profile=profile, executor=executor) as rt:
        candidates = rt.candidates
    anchors = scenario.anchors
    smallest, largest = anchors[0], anchors[-1]
    measured = {
        sid: served_open_loop(
            model, example, sid, profile, scenario.capacity_burst, scenario.capacity_singles, executor
        )
        for sid in (largest, smallest)
    }
    served, small = measured[largest], measured[smallest]
    per_request = (served.per_request_ms + small.per_request_ms) / 2
    per_batch = (served.per_batch_ms + small.per_batch_ms) / 2
    budgets = BudgetDistribution(*budget_range(profile, smallest, largest, per_request, per_batch, MAX_BATCH))
    calib = Calibration(
        profile=profile,
        candidates=list(candidates),
        variants_profile=variants_profile,
        smallest=smallest,
        largest=largest,
        capacity_per_s=served.throughput_per_s,
        smallest_capacity_per_s=small.throughput_per_s,
        budgets=budgets,
        service=ServiceModel(profile, per_request, per_batch),
        variants_service=ServiceModel(variants_profile, per_request, per_batch),
        served={str(sid): vars(m) for sid, m in measured.items()},
        seconds=time.perf_counter() - t0,
    )
    alone_ms = {  # a request alone: batch-1 p99 forward plus the runtime's own cost
        s: profile.latency_ms(s, 1, "p99") + per_batch + per_request for s in calib.statics()
    }
    calib.bound = no_queue_bound(scenario.accuracy, alone_ms, budgets)
    calib.accuracy = {s: scenario.accuracy[s] for s in calib.statics() if s in scenario.accuracy}
    log.info(
        "%s: capacity %.1f req/s (largest anchor %d), smallest anchor %d at %.1f req/s; budgets %s; "
        "overhead %.3f ms/request + %.3f ms/batch; candidates %s (%.0f s)",
        scenario.name,
        calib.capacity_per_s,
        largest,
        smallest,
        calib.smallest_capacity_per_s,
        budgets.describe(),
        per_request,
        per_batch,
        candidates,
        calib.seconds,
    )
    return calib


def served_open_loop(
    model,
    example: torch.Tensor,
    subnet: int,
    profile: LatencyProfile,
    burst: int,
    singles: int,
    executor: str | Executor = "eager",
) -> ServedCapacity:
    """What one static subnet sustains when driven as the load runs drive the runtime.

    The load runs submit from one thread and never block on a result until the end, so the
    worker serves every batch; `served_capacity` waits with `result()`, which lets the
    caller run batches itself and measures a different path. Here: `singles` requests one at
    a time (submit, then wait without `result()`) give the batch-1 latency; a burst of
    `burst` submitted at once and waited for gives the throughput; the engine's own fitted
    overhead model is read at the end.
    """
    with (
        torch.inference_mode(),
        Runtime(
            model,
            max_batch_size=MAX_BATCH,
            policy=f"static:{subnet}",
            profile=profile,
            batch_wait_ms=BATCH_WAIT_MS,
            executor=executor,
        ) as rt,
    ):
        for _ in range(5):
            wait([rt.submit(example, math.inf)])
        latencies = []
        for _ in range(singles):
            f = rt.submit(example, math.inf)
            wait([f])
            latencies.append(f.result().latency_ms)
        rounds, elapsed, sizes = 2, 0.0, []
        for _ in range(rounds):
            t0 = time.perf_counter()
            futures = [rt.submit(example, math.inf) for _ in range(burst)]
            wait(futures)
            elapsed += time.perf_counter() - t0
            sizes += [f.result().batch_size for f in futures]
        # once the oldest observation the latency model keeps is `refit_ms` old, the next
        # admission folds them all, the last batch's overhead included (serving/refit.py)
        time.sleep(rt.refit_ms / 1e3)
        wait([rt.submit(example, math.inf)])
        overhead = rt.scheduler.overhead
        if overhead.observations == 0:
            raise RuntimeError("the runtime reported no overhead observations")
    return ServedCapacity(
        subnet,
        rounds * burst / elapsed,
        statistics.median(latencies),
        statistics.fmean(sizes),
        overhead.per_request_ms,
        overhead.per_batch_ms,
    )
