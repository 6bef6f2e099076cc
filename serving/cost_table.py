"""`CostTable`: the cost side of `BudgetScheduler` — per-batch-size Pareto fronts and the
queries policies make of them (the `CostView` protocol, `serving/decision.py`).

For every batch size the candidates are kept on a Pareto front, latency and accuracy
ascending, with the upper concave hull of each front: "the fastest subnet meeting an
accuracy floor" and "the most accurate subnet within t ms" are binary searches
(`fastest`, `best_within`), and the priced search over a batch's subnets
(`best_priced`) walks the hull. The fronts hold the predictor's uncorrected latencies: the
online correction scales every subnet alike, so a query scales them exactly and the
fronts are never re-sorted. The busy-period pricing the elastic policy reads
(`charge_curve`, `displaced_per_ms`, `saturation_weight`) comes from the recent demand
(`serving/demand.py`).

A mixin: `BudgetScheduler.__init__` sets what it reads — `policy`, `quantile`,
`ewma_alpha`, `overhead`, `max_batch_size`, `demand`, `tail_control`, `_subnets`,
`_eligible_cache`, `_fast_any` — and then calls `set_profile`. Pure Python, no torch; the
queries run on a `FrontQuery` bound to the current predictions (serving/front_search.py,
compiled when built).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Mapping, Sequence

from elastic.errors import ConfigError
from elastic.subnet import Subnet

from .front_search import front_query
from .latency_model import LatencyModel
from .profile import LatencyProfile
from .request import Request

log = logging.getLogger(__name__)

_INF = math.inf
_NO_FLOOR = -math.inf
_ELIGIBLE_CACHE = 256  # most distinct min_accuracy values remembered by `eligible`


def concave_hull(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the upper concave hull of points sorted by x (both ends kept)."""
    hull: list[int] = []
    for k in range(len(xs)):
        while len(hull) >= 2:
            i, j = hull[-2], hull[-1]
            # drop j when it lies on or below the segment i -> k
            if (ys[j] - ys[i]) * (xs[k] - xs[i]) <= (ys[k] - ys[i]) * (xs[j] - xs[i]):
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


class CostTable:
    """The fronts and cost queries of a `BudgetScheduler` (a mixin: see the module docstring)."""

    def set_profile(self, profile: LatencyProfile, subnets: Sequence[Subnet] | None = None) -> None:
        """Install a (new) profile, and optionally a new subnet table (fresh accuracies):
        recompute the candidates and reset the online forward correction."""
        if subnets is not None:
            self._subnets = list(subnets)
        known = {s.id: s.accuracy for s in self._subnets if s.accuracy is not None}
        if known:
            value = dict(known)
            self.accuracy_known = True
        else:
            top = max((s.flops for s in self._subnets), default=1) or 1
            value = {s.id: s.flops / top for s in self._subnets}
            self.accuracy_known = False
            log.warning("no subnet has a measured accuracy: planning with FLOPs as a stand-in")
        front = profile.candidates(self._subnets, value=value)
        candidates = self.policy.restrict(front)
        missing = [sid for sid in candidates if sid not in profile.p50_ms]
        if missing or not candidates:
            raise ConfigError(f"policy {self.policy.name} needs subnets {missing or '(any)'} the profile lacks")
        for sid in candidates:
            value.setdefault(sid, 0.0)
        self._value = value
        self._real_accuracy = known
        self.candidates = candidates
        self.profile = profile
        # arrivals closer together than the fastest forward: requests arrive while forwards run
        self._stream_gap_s = min(profile.latency_ms(sid, 1, "p50") for sid in candidates) / 1e3
        self.latency = LatencyModel(profile, self.quantile, self.ewma_alpha, self.overhead)
        if self.tail_control is not None:  # the planning quantile outlives a new profile
            self.latency.forward.tail_quantile = self.tail_control.quantile
        self._eligible_cache.clear()
        self._build_fronts()
        log.info("scheduler %s: candidates %s", self.policy.name, self.candidates)

    @property
    def predictor(self):
        """The online-corrected forward predictor (`LatencyPredictor`)."""
        return self.latency.forward

    def _build_fronts(self) -> None:
        """Per batch size: the Pareto front of candidates, latency and accuracy ascending.

        The latencies kept are the predictor's uncorrected ones (`planned_ms`): the online
        correction scales every subnet alike (`LatencyPredictor`), so it never reorders a
        front, and a query scales them exactly (`best_within`). A front is rebuilt only
        when the measured tail replaces the profile's quantile."""
        forward = self.latency.forward
        self._front_lat: list[list[float]] = [[]]  # uncorrected: × shared (× tail) is the prediction
        self._front_ids: list[list[int]] = [[]]
        self._front_acc: list[list[float]] = [[]]
        self._front_hull: list[list[int]] = [[]]  # indices on the upper concave hull of each front
        self._front_pos: list[dict[int, int]] = [{}]  # subnet id -> index in each front
        for b in range(1, self.max_batch_size + 1):
            rows = sorted((forward.planned_ms(s, b), -self._value[s], s) for s in self.candidates)
            lat, ids, acc = [], [], []
            for ms, neg_acc, sid in rows:
                if not acc or -neg_acc > acc[-1]:
                    lat.append(float(ms))  # floats: what the compiled search reads (`front_search`)
                    ids.append(sid)
                    acc.append(float(-neg_acc))
            self._front_lat.append(lat)
            self._front_ids.append(ids)
            self._front_acc.append(acc)
            self._front_hull.append(concave_hull(lat, acc))
            self._front_pos.append({sid: k for k, sid in enumerate(ids)})
        self._front_tail = forward.tail is not None  # the measured tail replaced the profile's
        self._fast_any = None

    # the CostView protocol the policies read
    def predict_ms(self, subnet: int, batch: int) -> float:
        """Predicted service time of one batch: corrected forward + the engine's overhead."""
        return self.latency.service_ms(subnet, batch)

    def overhead_ms(self, batch: int) -> float:
        return self.overhead.ms(batch)

    def accuracy(self, subnet: int) -> float:
        return self._value[subnet]

    def accuracies(self) -> Mapping[int, float]:
        """`accuracy` of every candidate by id, read-only: for a decision that reads many
        (a lookup instead of a call each)."""
        return self._value

    def real_accuracy(self, subnet: int) -> float | None:
        """The measured accuracy of `subnet`, None when unknown (no FLOPs stand-in)."""
        return self._real_accuracy.get(subnet)

    def eligible(self, min_accuracy: float | None) -> list[int]:
        """Candidate ids meeting `min_accuracy` (all for None), fastest first at batch 1."""
        ids = self._eligible_cache.get(min_accuracy)
        if ids is None:
            if min_accuracy is None:
                ids = list(self.candidates)
            else:
                ids = [
                    s
                    for s in self.candidates
                    if (acc := self._real_accuracy.get(s)) is not None and acc >= min_accuracy
                ]
            if len(self._eligible_cache) >= _ELIGIBLE_CACHE:  # bounded: clients choose the floors
                self._eligible_cache.clear()
            self._eligible_cache[min_accuracy] = ids
        return ids

    def fastest(self, min_accuracy: float | None, batch: int = 1) -> tuple[int, float] | None:
        """(id, predicted service ms) of the fastest candidate meeting `min_accuracy` at `batch`."""
        if min_accuracy is None and 1 <= batch <= self.max_batch_size:  # the common case, cached
            return (self._fast_any or self.fastest_at())[batch]
        if min_accuracy is not None and not self.accuracy_known:
            return None
        b = min(max(1, batch), self.max_batch_size)
        acc = self._front_acc[b]
        i = 0 if min_accuracy is None else bisect.bisect_left(acc, min_accuracy)
        if i == len(acc):
            return None
        sid = self._front_ids[b][i]
        return sid, self.latency.forward.predict_ms(sid, batch) + self.overhead.ms(batch)

    def best_within(self, batch: int, floor: float, max_ms: float, expected: bool = False) -> tuple[int, float] | None:
        """(id, service ms) of the most accurate candidate with accuracy >= `floor` whose
        service time at `batch` is <= `max_ms`; None if there is none (`FrontQuery.best_within`:
        two binary searches). `expected`: bound the expected service time, without the
        measured tail factor; the ms returned is the planned one either way."""
        return self.front_query().best_within(batch, floor, max_ms, expected)

    def front_query(self):
        """The fronts bound to the current predictions (`FrontQuery`, compiled when built): what
        one decision asks `best_within` of many times, without a Python call each. Rebuilt with
        `fastest_at`'s row, whenever a prediction or the overhead changes."""
        if self._fast_any is None:
            self.fastest_at()
        return self._query

    def arrival_gap_ms(self) -> float | None:
        """Mean time between recent arrivals (admitted or not), in ms; None while unknown."""
        return self.demand.gap_ms()

    def busy_arrival_gap_ms(self) -> float | None:
        """Time between arrivals while a batch runs, in ms (`Demand.busy_gap_ms`): inf when
        none arrive then (clients that wait for their answers), None while unknown."""
        return self.demand.busy_gap_ms()

    def blocked_curve(self) -> Callable[[float], float]:
        """Expected arrivals a busy period of `busy_ms` turns away (`Demand.blocked`), as a
        function of `busy_ms` bound to the current rate and budgets: one decision asks many
        times (`Demand.blocked_curve`)."""
        return self.demand.blocked_curve(self._service_at(1))

    def charge_curve(self, sat_weight: float) -> Callable[[float, float, float], float]:
        """`busy_charge` over `blocked_curve()` with `sat_weight`, as one function of (ms,
        rest_ms, fluid_ms) (`Demand.charge_curve`)."""
        return self.demand.charge_curve(self._service_at(1), sat_weight)

    def displaced_per_ms(self) -> float:
        """Answers a ms of worker time displaces when the worker is the bottleneck: the
        busy-time arrival rate, capped at the fastest full batch's throughput, weighted by
        u² where u is the share of the worker those arrivals need at that throughput
        (u ≥ 1: saturated, every ms is an answer lost; u → 0: idle time absorbs it).
        0 while the rate is unknown or nothing arrives during batches."""
        gap = self.demand.busy_gap_ms()
        if gap is None or gap == _INF:
            return 0.0
        b = self.max_batch_size
        t_full = self._service_at(b)
        u = t_full / (b * gap)
        return min(1.0 / gap, b / t_full) * min(1.0, u) ** 2

    def saturation_weight(self, theta: float) -> float:
        """The weight of the saturation charge (`busy_charge`) when the worker turns each ms
        into `theta` answers (`displaced_per_ms`): an arrival displaced by the work ahead of
        it is lost only when its budget is shorter than that work plus its own service, so
        the answers a batch displaces are `Demand.blocked` over the batch and the queue at
        rate theta instead of the arrival rate, i.e. weighted by theta / arrival rate — a
        burst with budgets longer than the backlog costs nothing."""
        return theta * self.demand.busy_gap_ms() if theta else 0.0

    def best_priced(
        self,
        batch: int,
        floor: float,
        top: int,
        members: int,
        price: float,
        charge: Callable[[float], float],
        known: tuple[float, float] | None = None,
    ) -> tuple[int, float]:
        """(id, service ms) maximising members × accuracy − price × charge(service ms) among
        `top` and the candidates faster than it at `batch` that meet `floor`; `top` itself
        without a price.

        `price` is what one arrival turned away by the batch's busy period loses, and
        `charge(ms)` how many arrivals a batch of `ms` costs, with the queue behind it
        (`busy_charge` over the decision's `blocked_curve`): never negative and convex in
        ms. The search over the front's hull is `FrontQuery.best_priced`; `known`: (value,
        service ms) of `top` when the caller has priced it already, exactly as there.
        """
        found = self.front_query().best_priced(batch, floor, top, members, price, charge, known)
        if found is None:  # no price, or top is not on the front: top itself
            over = self.overhead.per_batch_ms + self.overhead.per_request_ms * batch
            return top, self.latency.forward.predict_ms(top, batch) + over
        return found

    def fastest_ms(self, request: Request) -> float:
        found = self.fastest(request.min_accuracy, 1)
        return found[1] if found is not None else math.inf

    def _refresh_fronts(self) -> None:
        """Rebuild the fronts when the measured tail has replaced the profile's quantile
        (the uncorrected latencies they hold changed); the correction never reorders them."""
        if (self.latency.forward.tail is not None) != self._front_tail:
            self._build_fronts()

    def fastest_at(self) -> list[tuple[int, float] | None]:
        """[b] = (id, service ms) of the fastest candidate at batch size b, no accuracy floor
        ([0] is None): built in one pass over the fronts' first points, scaled as
        `best_within` scales them (`predict_ms`'s products, bit for bit), cached until a
        prediction or the overhead changes (every policy decision reads most of it); the
        `front_query` of the same state is bound with it."""
        row = self._fast_any
        if row is None:
            forward = self.latency.forward
            shared, tail = forward.shared, forward.tail
            per_batch, per_request = self.overhead.per_batch_ms, self.overhead.per_request_ms
            tail = 1.0 if tail is None else tail  # × 1.0 is exact: `predict_ms`'s products, bit for bit
            firsts = zip(range(1, len(self._front_ids)), self._front_ids[1:], self._front_lat[1:], strict=True)
            row = [None, *[(ids[0], lat[0] * shared * tail + (per_batch + per_request * b)) for b, ids, lat in firsts]]
            self._fast_any = row
            self._query = front_query(
                self._front_lat,
                self._front_ids,
                self._front_acc,
                self._front_hull,
                self._front_pos,
                shared,
                tail,
                per_batch,
                per_request,
                self.accuracy_known,
            )
        return row

    def _service_at(self, size: int) -> float:
        """Service ms of `size` requests on the fastest subnet (`fastest_at`'s row; with an
        accuracy floor, `FrontQuery.service_ms`)."""
        return (self._fast_any or self.fastest_at())[size][1]
