"""`FrontQuery`: "the most accurate subnet within t ms" on a scheduler's fronts, for one
prediction state, and admission's queue plan over them — and the compiled versions of it
and of the busy-period charge.

A `CostTable` keeps, per batch size, a Pareto front of uncorrected latencies; the online
correction (`shared`, the measured `tail`) and the engine's overhead scale a query's answer
at query time. Between two prediction updates those factors are fixed, so the table binds
them once into a `FrontQuery` (`CostTable.front_query`): one decision of the elastic
policy asks it some ten times (`OnFronts`), and every admission plans the queue on it
(`plan_late`, `QueuePlan`).

The compiled module `elastic.serving._front_search` (serving/_front_search.c, built by
`pip install`) holds the same `FrontQuery` and `Demand.charge_curve`'s charge, bit for
bit: every float operation in the same order, every binary search `bisect`'s. A decision
is the same with or without it (tests/serving/test_front_search.py); how much less it
costs, `elastic bench scheduler` says (its `python` rows). Without a C compiler the
install goes on without it, and `ELASTIC_PURE_PYTHON=1` in the environment leaves it
unused; the Python here is the reference either way. No torch.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import accumulate
from typing import Any

log = logging.getLogger(__name__)

_NO_FLOOR = -math.inf


def _load_native() -> Any:
    """The compiled module, or None (not built, or `ELASTIC_PURE_PYTHON=1`)."""
    if os.environ.get("ELASTIC_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _front_search
    except ImportError as e:
        log.info("elastic.serving._front_search not built (%s): the scheduler's searches run in Python", e)
        return None
    return _front_search


native = _load_native()  # the compiled module, or None


@contextmanager
def pure_python() -> Iterator[None]:
    """Leave the compiled module unused within the block (for tests and benchmarks that
    compare the two; not thread-safe): schedulers built and decisions taken inside run the
    Python reference."""
    global native
    saved, native = native, None
    try:
        yield
    finally:
        native = saved


class FrontQuery:
    """The fronts of one prediction state: `best_within` per batch size.

    Args:
        lat, ids, acc: per batch size b ([b]; [0] empty), the front's uncorrected latencies,
            subnet ids and accuracies, latency and accuracy ascending (lists of floats).
        hull, pos: per batch size, the indices of the front's upper concave hull (ascending)
            and subnet id -> index in the front.
        shared: the online correction every prediction is scaled by.
        tail: the measured tail factor (1.0 until measured).
        per_batch, per_request: the engine's overhead, ms per batch and per request.
        accuracy_known: whether accuracies are measured (else no floor can be met).
    """

    __slots__ = ("lat", "ids", "acc", "hull", "pos", "shared", "tail", "per_batch", "per_request", "accuracy_known")

    def __init__(
        self, lat, ids, acc, hull, pos, shared: float, tail: float, per_batch: float, per_request: float, accuracy_known
    ):
        self.lat, self.ids, self.acc, self.hull, self.pos = lat, ids, acc, hull, pos
        self.shared, self.tail = shared, tail
        self.per_batch, self.per_request = per_batch, per_request
        self.accuracy_known = bool(accuracy_known)

    def best_within(self, batch: int, floor: float, max_ms: float, expected: bool = False) -> tuple[int, float] | None:
        """(id, service ms) of the most accurate candidate with accuracy >= `floor` whose
        service time at `batch` is <= `max_ms`; None if there is none. Two binary searches.

        `expected`: bound the expected service time instead of the planned one — without
        the measured tail factor, the margin a deadline needs; a rate of batches is paid at
        the mean. The ms returned is the planned one either way. Until the tail is measured
        the two are the same."""
        shared, tail = self.shared, self.tail
        bound = 1.0 if expected else tail
        lat = self.lat[batch]
        over = self.per_batch + self.per_request * batch
        limit = max_ms - over
        j = bisect.bisect_right(lat, limit / (shared * bound)) - 1
        # the bisect may be one rounding off at the boundary: settle it on the exact products
        ms = lat[j] * shared * bound if j >= 0 else None
        while ms is not None and ms > limit:
            j -= 1
            ms = lat[j] * shared * bound if j >= 0 else None
        while j + 1 < len(lat):
            after = lat[j + 1] * shared * bound
            if after > limit:
                break
            j, ms = j + 1, after
        if j < 0:
            return None
        if floor > _NO_FLOOR and (not self.accuracy_known or self.acc[batch][j] < floor):
            return None
        return self.ids[batch][j], (ms if bound == tail else lat[j] * shared * tail) + over

    def best_priced(
        self,
        batch: int,
        floor: float,
        top: int,
        members: int,
        price: float,
        charge: Callable[[float], float],
        known: tuple[float, float] | None = None,
    ) -> tuple[int, float] | None:
        """`CostTable.best_priced` on the front: (id, service ms) maximising members ×
        accuracy − price × charge(service ms) among `top` and the candidates faster than it
        at `batch` that meet `floor`; None when there is no price or `top` is not on the
        front (then `top` itself, which the caller prices with the predictor).

        On the front's upper concave hull the gain of a slower subnet shrinks and the charge
        (convex, never negative) grows, so a binary search finds the best hull point; `top`
        (maybe off the hull) is compared with it. `known`: (value, service ms) of `top` when
        the caller has priced it already, exactly as here."""
        pos = self.pos[batch]
        if price <= 0 or top not in pos:
            return None
        ids, acc, hull, lat = self.ids[batch], self.acc[batch], self.hull[batch], self.lat[batch]
        shared, tail = self.shared, self.tail
        over = self.per_batch + self.per_request * batch
        j_top = pos[top]
        memo: dict[int, tuple[float, float]] = {} if known is None else {j_top: known}

        def value(j: int) -> tuple[float, float]:
            if j not in memo:
                ms = lat[j] * shared * tail + over  # `predict_ms(ids[j], batch) + over`, bit for bit
                memo[j] = (members * acc[j] - price * charge(ms), ms)
            return memo[j]

        # a charge is never negative: only a subnet whose members × accuracy exceeds top's
        # value can beat top, so the search starts at the first such hull point (the peak,
        # if it beats top, lies at or after it)
        first = 0 if floor == _NO_FLOOR else bisect.bisect_left(acc, floor)
        if members:
            first = max(first, bisect.bisect_right(acc, value(j_top)[0] / members))
        lo = bisect.bisect_left(hull, first)
        hi = bisect.bisect_right(hull, j_top) - 1
        while lo < hi:  # unimodal along the hull: find its peak
            mid = (lo + hi) // 2
            if value(hull[mid + 1])[0] > value(hull[mid])[0]:
                lo = mid + 1
            else:
                hi = mid
        best = j_top
        if lo == hi and value(hull[lo])[0] > value(j_top)[0]:
            best = hull[lo]
        return ids[best], value(best)[1]

    def service_ms(self, size: int, floor: float) -> float:
        """Service ms of `size` requests on the fastest subnet meeting `floor` (inf: none
        does): `predict_ms` plus the overhead, bit for bit (`CostTable.fastest_at`'s row
        where there is no floor)."""
        acc = self.acc[size]
        i = 0 if floor == _NO_FLOOR else bisect.bisect_left(acc, floor)
        if i == len(acc):
            return math.inf
        return self.lat[size][i] * self.shared * self.tail + (self.per_batch + self.per_request * size)

    def plan_late(self, hard: list[float], floors: list[float] | None, t: float, max_batch: int) -> list[int]:
        """Positions in `hard` that miss their deadline in the engine's cheapest plan from
        `t` (`QueuePlan._plan_late`, which says what the plan is)."""
        B = max_batch
        service = self.service_ms
        late: list[int] = []
        i, n = 0, len(hard)
        if floors is None:  # the common case first: full batches that all make it
            full = service(B, _NO_FLOOR) / 1e3
            while i + B <= n and t + full <= min(hard[i : i + B]):
                t += full
                i += B
        while i < n:
            m = min(B, n - i)
            chunk = hard[i : i + m]
            svc = service(m, max(floors[i : i + m]) if floors else _NO_FLOOR) / 1e3
            if t + svc <= min(chunk):  # the common case: a full batch makes it
                t += svc
                i += m
                continue
            earliest = list(accumulate(chunk, min))
            strictest = list(accumulate(floors[i : i + m], max)) if floors else None
            lo, hi = 0, m - 1  # the largest size s that makes it: predicate monotone in s
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if t + service(mid, strictest[mid - 1] if strictest else _NO_FLOOR) / 1e3 <= earliest[mid - 1]:
                    lo = mid
                else:
                    hi = mid - 1
            if lo == 0:
                late.append(i)
                i += 1
                continue
            t += service(lo, strictest[lo - 1] if strictest else _NO_FLOOR) / 1e3
            i += lo
        return late


def front_query(
    lat, ids, acc, hull, pos, shared: float, tail: float, per_batch: float, per_request: float, accuracy_known
):
    """A `FrontQuery` over these fronts: the compiled one when it is built."""
    cls = native.FrontQuery if native is not None else FrontQuery
    return cls(lat, ids, acc, hull, pos, shared, tail, per_batch, per_request, accuracy_known)
