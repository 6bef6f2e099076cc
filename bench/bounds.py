"""The no-queue bound: the most effective accuracy any policy could reach on a scenario's budgets.

A request alone on an idle server, answered by the most accurate subnet whose batch-1 latency
(the profile's p99 plus the runtime's own per-batch and per-request cost) fits its budget, is
the best any scheduler can do for it. Averaged over the budget distribution that is a ceiling
on effective accuracy at every load; the same for one fixed subnet is a ceiling on that
static. The gap between the per-request ceiling and the best static's is what choosing a
subnet per request can gain before load enters; under load both sides lose from there, and a
margin over the best static larger than this gap can only come from the static losing more.

With log-uniform budgets the average is exact: the per-request ceiling is a step function of
the budget that rises at each subnet's latency, so it is a sum over those steps of the rise
times the share of budgets at least that long.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .arrivals import BudgetDistribution


def no_queue_bound(
    accuracy: Mapping[int, float], latency_ms: Mapping[int, float], budgets: BudgetDistribution
) -> dict[str, Any]:
    """Expected accuracy within budget of per-request choice and of each static, with no queue.

    Args:
        accuracy: subnet -> accuracy in [0, 1]; only subnets in both maps count.
        latency_ms: subnet -> batch-1 latency of a request alone, overheads included.
        budgets: the per-request budget distribution.

    Returns:
        {"per_request": ceiling, "static": {subnet: ceiling}, "best_static": subnet,
         "gap": per_request - the best static's ceiling}.
    """
    subnets = sorted((s for s in accuracy if s in latency_ms), key=lambda s: latency_ms[s])
    if not subnets:
        raise ValueError("no subnet has both an accuracy and a latency")
    per_request, best = 0.0, 0.0
    for s in subnets:  # fastest first: the ceiling rises where a more accurate subnet fits
        if accuracy[s] > best:
            per_request += (accuracy[s] - best) * budgets.share_at_least(latency_ms[s])
            best = accuracy[s]
    static = {s: accuracy[s] * budgets.share_at_least(latency_ms[s]) for s in subnets}
    best_static = max(static, key=static.get)
    return {
        "per_request": per_request,
        "static": static,
        "best_static": best_static,
        "gap": per_request - static[best_static],
    }
