"""Ceilings on effective accuracy: the no-queue bound over a budget distribution, and the
fluid bound over one trace's arrivals (`fluid_bound`).

The no-queue bound: the most effective accuracy any policy could reach on a scenario's budgets.

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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .arrivals import BudgetDistribution
from .simulate import ServiceModel


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


def fluid_bound(
    arrivals_s: Sequence[float],
    budgets_ms: Sequence[float],
    accuracy: Mapping[int, float],
    service: ServiceModel,
    max_batch: int,
    resolution_ms: float = 0.0,
) -> float:
    """The most effective accuracy any schedule of this trace could reach, clairvoyant or not.

    A linear relaxation of serving the trace on one worker whose batches take the profile's
    median time plus the runtime's own cost (`ServiceModel` without its spread). Each request
    is served by a fraction of each subnet (at most one in all), and a request served by
    subnet s occupies the worker for its share of the cheapest batch of s that fits its
    budget alone — busy(s, b) / b for the b <= `max_batch` with the least share among those
    whose busy(s, b) is within its budget, as if b - 1 companions were there to share it.
    That share may be spread over any instants between its arrival and its deadline
    (preemptive and fractional), and in every instant the shares add up to at most the
    worker's time. Every real schedule is such a plan: a batch of b requests on s runs
    between each member's arrival and deadline, takes busy(s, b) <= every member's budget,
    and gives each member a 1/b share of it. So no policy — preemptive, clairvoyant or
    not — reaches more than this value in expectation, unless its forwards run faster than
    the profile's medians.

    The expected accuracy of a served request is its subnet's accuracy, so this bounds the
    mean effective accuracy the load suite reports (the Bernoulli draws average to it).

    Args:
        arrivals_s: arrival times in seconds.
        budgets_ms: each request's budget.
        accuracy: subnet -> accuracy in [0, 1]; the subnets a policy may serve.
        service: profile medians and the runtime's per-batch / per-request cost.
        max_batch: the largest batch the runtime forms.
        resolution_ms: widen every request's window outwards to a grid of this step (0: the
            exact arrival and deadline instants). A wider window only relaxes the problem, so
            the value stays an upper bound; a coarser grid makes a long trace's program small.

    Returns:
        The bound on mean effective accuracy over all requests of the trace (0 for none).
    """
    from scipy.optimize import linprog
    from scipy.sparse import csr_array

    n = len(arrivals_s)
    if n != len(budgets_ms):
        raise ValueError(f"{n} arrival times for {len(budgets_ms)} budgets")
    if n == 0:
        return 0.0
    subnets = sorted(accuracy)
    if not subnets:
        raise ValueError("no subnet to serve with")
    sizes = np.arange(1, max_batch + 1)
    busy = np.array(  # [subnet, batch - 1]: ms the worker is busy with one batch
        [[service.profile.latency_ms(s, int(b), "p50") + service.overhead_ms(int(b)) for b in sizes] for s in subnets]
    )
    budget = np.asarray(budgets_ms, dtype=float)
    fits = busy[None, :, :] <= budget[:, None, None]  # [request, subnet, batch - 1]
    share = np.where(fits, busy[None] / sizes[None, None, :], np.inf).min(axis=2)  # [request, subnet]
    value = np.asarray([accuracy[s] for s in subnets], dtype=float)

    start = 1e3 * np.asarray(arrivals_s, dtype=float)
    end = start + budget
    if resolution_ms > 0:
        start = np.floor(start / resolution_ms) * resolution_ms
        end = np.ceil(end / resolution_ms) * resolution_ms
    instants = np.unique(np.concatenate([start, end]))
    slot_ms = np.diff(instants)
    first, stop = np.searchsorted(instants, start), np.searchsorted(instants, end)

    # variables: y[r, s] (fraction of r served by s; only where s fits r) then z[r, k] (ms of
    # r's share placed in slot k of its window)
    req, sub = np.nonzero(np.isfinite(share))
    n_y = len(req)
    spans = stop - first
    z_req = np.repeat(np.arange(n), spans)
    z_slot = np.concatenate([np.arange(a, b) for a, b in zip(first, stop, strict=True)])
    n_var = n_y + len(z_req)
    z_var = n_y + np.arange(len(z_req))
    # r's shares equal the time placed for it: sum_s share[r, s] y[r, s] - sum_k z[r, k] = 0
    a_eq = csr_array(
        (np.concatenate([share[req, sub], -np.ones(len(z_req))]), (np.concatenate([req, z_req]), np.arange(n_var))),
        shape=(n, n_var),
    )
    # sum_s y[r, s] <= 1 per request; sum_r z[r, k] <= slot k's length per slot
    a_ub = csr_array(
        (np.ones(n_var), (np.concatenate([req, n + z_slot]), np.concatenate([np.arange(n_y), z_var]))),
        shape=(n + len(slot_ms), n_var),
    )
    cost = np.concatenate([-value[sub], np.zeros(len(z_req))])
    solved = linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.concatenate([np.ones(n), slot_ms]),
        A_eq=a_eq,
        b_eq=np.zeros(n),
        bounds=(0, None),
        # interior point (then crossover): the same optimum as HiGHS's default (its simplex here)
        # to ~1e-14, 2.3-3.6x faster on the demo's long traces (14,000 requests, 430,000
        # variables: 15 s against 54 s), as fast on small ones
        method="highs-ipm",
    )
    if solved.status != 0:
        raise RuntimeError(f"the fluid bound's linear program did not solve: {solved.message}")
    return float(-solved.fun / n)
