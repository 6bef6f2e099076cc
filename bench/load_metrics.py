"""What the load suite reports for one (policy, load) run, from per-request records.

A request is *in SLO* when it got a result within its budget; it is *effectively correct*
when it is in SLO and its prediction matches its label. Late, rejected, shed and failed
requests count as wrong: a serving system is judged on what reached the user in time.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request."""

    budget_ms: float  # its latency budget
    outcome: str  # "ok" | "late" | "rejected" | "shed" | "error"
    latency_ms: float | None = None  # arrival to result, when it got one
    correct: bool | None = None  # prediction == label, when it got one
    subnet: int | None = None  # which subnet served it
    batch_size: int | None = None  # size of the batch it ran in


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(records: Sequence[RequestRecord]) -> dict:
    """SLO attainment, effective accuracy, latency percentiles and counts over `records`."""
    n = len(records)
    outcomes = Counter(r.outcome for r in records)
    served = [r for r in records if r.latency_ms is not None]
    admitted = [r for r in records if r.outcome not in ("rejected", "shed")]
    in_slo = [r for r in served if r.outcome == "ok" and r.latency_ms <= r.budget_ms]
    latencies = [r.latency_ms for r in served]
    batches = [r.batch_size for r in served if r.batch_size]
    return {
        "requests": n,
        "slo_attainment": len(in_slo) / n if n else None,
        "admitted_slo_attainment": len(in_slo) / len(admitted) if admitted else None,
        "effective_accuracy": sum(1 for r in in_slo if r.correct) / n if n else None,
        "served_accuracy": (sum(1 for r in served if r.correct) / len(served)) if served else None,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "outcomes": dict(outcomes),
        "rejected": outcomes.get("rejected", 0),
        "shed": outcomes.get("shed", 0),
        "errors": outcomes.get("error", 0),
        "late": outcomes.get("late", 0),
        "mean_batch": statistics.fmean(batches) if batches else None,
        "per_subnet": dict(sorted(Counter(r.subnet for r in served if r.subnet is not None).items())),
    }
