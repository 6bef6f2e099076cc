"""Open-loop load generation: replay a labelled image stream through a `Runtime` and score it.

An open-loop load generator, as in the evaluations of Clockwork (OSDI'20) and SuperServe
(NSDI'25): requests arrive as a Poisson process at `rate_per_s` whether or not earlier ones
are answered, each with a budget drawn at random. The score is SuperServe's: SLO
attainment (share answered within budget) and effective accuracy — predictions that are
both correct and on time, over all requests; a late, rejected, shed or failed request
counts as wrong.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, wait
from typing import Any

import torch

from elastic.errors import BudgetInfeasible, ExecutionError, InvalidInput, Overloaded

from .request import Result
from .runtime import Runtime

log = logging.getLogger(__name__)


def replay(
    runtime: Runtime,
    images: torch.Tensor,
    labels: torch.Tensor,
    budgets_ms: Sequence[float],
    rate_per_s: float,
    seed: int = 0,
    *,
    requests: int | None = None,
    min_accuracy: float | None = None,
    best_effort: bool = False,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Send `requests` images at `rate_per_s` with random budgets; score what comes back.

    Args:
        runtime: a profiled runtime.
        images: the stream, one sample per row; request k sends image k mod N.
        labels: the true class of each image.
        budgets_ms: budgets to draw from, uniformly at random per request.
        rate_per_s: mean arrival rate (Poisson); math.inf sends everything at once.
        seed: seeds arrivals and budgets.
        requests: how many requests (default: one per image).
        min_accuracy: passed to every request.
        best_effort: passed to every request.
        timeout_s: most seconds to wait for the last answers (None: no limit; the runtime
            answers every admitted request).

    Shape:
        images: (N, C, H, W); labels: (N,)

    Returns:
        JSON-ready: requests, slo_attainment, effective_accuracy, per_subnet_counts (subnet id
        as a string -> requests it answered), rejected, shed, late, errors, answered,
        answered_accuracy (correct among answered, on time or not), latency_ms (p50/p99 of
        answered), offered_rate_per_s, achieved_rate_per_s, duration_s, budgets_ms, seed.
    """
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    if not budgets_ms:
        raise ValueError("budgets_ms is empty")
    n = len(images) if requests is None else int(requests)
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate_per_s) if math.isfinite(rate_per_s) else 0.0
        arrivals.append(t)
    budgets = [float(rng.choice(list(budgets_ms))) for _ in range(n)]
    report = replay_schedule(
        runtime,
        images,
        labels,
        arrivals,
        budgets,
        min_accuracy=min_accuracy,
        best_effort=best_effort,
        timeout_s=timeout_s,
    )
    report.update(
        offered_rate_per_s=rate_per_s if math.isfinite(rate_per_s) else None,
        budgets_ms=sorted(float(b) for b in budgets_ms),
        seed=seed,
    )
    return report


def replay_schedule(
    runtime: Runtime,
    images: torch.Tensor,
    labels: torch.Tensor,
    arrivals_s: Sequence[float],
    budgets_ms: Sequence[float],
    *,
    min_accuracy: float | None = None,
    best_effort: bool = False,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Send request k at `arrivals_s[k]` seconds from now with budget `budgets_ms[k]`; score it.

    The open-loop core of `replay`, for callers with their own arrival process (bursty
    on/off in the benchmark's load suite) or budget distribution. Request k sends image
    k mod N. Returns the same report as `replay`, without the generator's settings.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images, and some: {len(images)} vs {len(labels)}")
    if len(arrivals_s) != len(budgets_ms):
        raise ValueError(f"{len(arrivals_s)} arrival times for {len(budgets_ms)} budgets")
    n = len(arrivals_s)
    sent: list[tuple[int, float, Future[Result]]] = []
    rejected = Counter()
    samples = images.unbind(0)  # split once: indexing is a tensor operation, which lets go of the lock
    t0 = time.perf_counter()
    for k, (at, budget) in enumerate(zip(arrivals_s, budgets_ms, strict=True)):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        i = k % len(samples)
        try:
            future = runtime.submit(samples[i], budget, min_accuracy=min_accuracy, best_effort=best_effort)
        except BudgetInfeasible:
            rejected["infeasible"] += 1
            continue
        except Overloaded:
            rejected["overloaded"] += 1
            continue
        except InvalidInput:
            rejected["invalid"] += 1
            continue
        sent.append((i, budget, future))
    t_sent = time.perf_counter()
    _, not_done = wait([f for _, _, f in sent], timeout=timeout_s)
    if not_done:
        log.warning("%d requests still unanswered after %s s", len(not_done), timeout_s)
    duration = time.perf_counter() - t0

    per_subnet: Counter[str] = Counter()
    on_time = correct_on_time = correct = late = shed = errors = unanswered = 0
    latencies: list[float] = []
    batch_sizes: list[int] = []
    for i, _, future in sent:
        if not future.done():
            unanswered += 1
            continue
        error = future.exception()
        if isinstance(error, Overloaded):
            shed += 1
            continue
        if error is not None:
            if not isinstance(error, ExecutionError):
                log.warning("unexpected error type from the runtime: %r", error)
            errors += 1
            continue
        result = future.result()
        per_subnet[str(result.subnet)] += 1
        latencies.append(result.latency_ms)
        batch_sizes.append(result.batch_size)
        hit = int(result.output.argmax()) == int(labels[i])
        correct += hit
        if result.met_budget:
            on_time += 1
            correct_on_time += hit
        else:
            late += 1
    answered = len(latencies)
    ordered = sorted(latencies)
    report = {
        "requests": n,
        "slo_attainment": on_time / n if n else 0.0,
        "admitted_slo_attainment": on_time / len(sent) if sent else None,
        "effective_accuracy": correct_on_time / n if n else 0.0,
        "per_subnet_counts": dict(sorted(per_subnet.items(), key=lambda kv: int(kv[0]))),
        "rejected": sum(rejected.values()),
        "rejected_by_reason": dict(rejected),
        "shed": shed,
        "late": late,
        "errors": errors,
        "unanswered": unanswered,
        "answered": answered,
        "answered_accuracy": correct / answered if answered else 0.0,
        "latency_ms": {
            "p50": statistics.median(ordered) if ordered else None,
            "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None,
        },
        "mean_batch_size": statistics.fmean(batch_sizes) if batch_sizes else None,
        "achieved_rate_per_s": n / (t_sent - t0) if t_sent > t0 else None,
        "duration_s": duration,
    }
    log.info(
        "replayed %d requests: SLO attainment %.3f, effective accuracy %.3f",
        n,
        report["slo_attainment"],
        report["effective_accuracy"],
    )
    return report
