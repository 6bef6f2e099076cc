"""`Demand`: the recent arrival rate and budgets, and what a busy period costs the arrivals.

A worker runs one batch at a time and a forward cannot be interrupted, so a batch that runs
for T ms also decides the fate of the requests that arrive during it: one that arrives with
u ms of the batch left and a budget of β ms makes its deadline only if β ≥ u + c, where c is
the fastest service it could get afterwards. With arrivals at rate λ, uniform over the busy
period, the expected number of arrivals a busy period of T ms makes miss is

    blocked(T) = λ · ∫₀ᵀ P(β < u + c) du = λ · E_β[ clamp(T + c − β, 0, T) ],

over the distribution of budgets, taken here as the last `window` budgets seen. blocked(T) is
convex in T (its slope, λ · P(β < T + c), grows with T), so on a concave accuracy/latency
front "more accuracy for this batch vs more arrivals turned away" has a single best point
(`BudgetScheduler.best_priced` searches it). This is the opportunity cost of a long batch
that size-and-deadline rules leave out: an idle-looking queue at moderate load still pays
for a slow subnet with the tight requests that arrive behind it.

Every request counts, admitted or not — a rejected request is exactly the demand a long
batch turned away. The rate λ in blocked(T) is the rate of arrivals *while the worker is
busy*: arrivals counted during the recent busy periods over their total length (the
shortest run of recent periods holding 16 such arrivals, at most 256 periods). For open-loop
arrivals that is the arrival rate (Poisson arrivals see time averages); for bursts, the rate
inside the bursts, when the worker is busy; and for clients that wait for each answer
before sending the next, only the other clients' requests — one such client is never
priced into a cheaper subnet for arrivals that cannot happen. Pure Python (the charge
compiled when built: serving/front_search.py): O(log window)
per query; the sorted sample is rebuilt at most once per `refresh` arrivals.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable
from itertools import accumulate

from . import front_search

_RATE_WINDOW = 64  # arrivals the arrival-rate estimate spans: the median of 15 gaps is off by
# ~30 %, of 63 by ~15 %; the backlog rule's 10 % margin flipped on the noise of 15 (simulated
# demo, Poisson 1.5x-2x: subnet 0 for a quarter of the batches where subnet 1 keeps up)
_BUDGET_WINDOW = 256  # budgets the distribution estimate spans
_REFRESH = 32  # arrivals between rebuilds of the sorted budget sample
_MIN_ARRIVALS = 5  # arrivals before a rate is estimated (the median of 4 gaps)
_BUSY_ARRIVALS = 16  # arrivals during busy periods the busy-time rate spans
_BUSY_PERIODS = 256  # busy periods it spans at most
_MIN_BUSY_PERIODS = 4  # busy periods before it is known
_LN2 = 0.6931471805599453


class Demand:
    """Arrival rate and budget distribution over a sliding window of recent requests.

    Args:
        rate_window: arrivals the rate estimate spans.
        budget_window: budgets the distribution estimate spans.
        refresh: arrivals between rebuilds of the sorted sample.
    """

    def __init__(self, rate_window: int = _RATE_WINDOW, budget_window: int = _BUDGET_WINDOW, refresh: int = _REFRESH):
        self._times: deque[float] = deque(maxlen=rate_window)
        # the gaps between consecutive `_times`, in arrival order and sorted, kept as they
        # change (one insertion and at most one removal per arrival) for the median
        self._gaps: deque[float] = deque()
        self._sorted_gaps: list[float] = []
        self._budgets: deque[float] = deque(maxlen=budget_window)
        self._refresh = refresh
        self._stale = 0  # budgets recorded since the sorted sample was built
        self._sorted: list[float] = []
        self._prefix: list[float] = [0.0]  # _prefix[k] = sum of the k smallest budgets
        self._gap: float | None = None  # cached gap_ms(), until the next arrival
        self._gap_known = False
        self._periods: deque[tuple[float, int]] = deque()  # (busy ms, arrivals during it)
        self._busy_ms = 0.0  # sums over _periods
        self._busy_count = 0
        self._count_now = 0  # arrivals during the busy period in progress

    def record(self, now: float, budget_ms: float, busy: bool = False) -> None:
        """One arrival at `now` (s) with `budget_ms` (inf for a best-effort request);
        `busy`: a batch was running when it arrived."""
        times, gaps, ordered = self._times, self._gaps, self._sorted_gaps
        if times:
            gap = now - times[-1]
            gaps.append(gap)
            bisect.insort(ordered, gap)
        times.append(now)
        while len(gaps) >= len(times):  # the oldest arrival left the window, and its gap with it
            del ordered[bisect.bisect_left(ordered, gaps.popleft())]
        self._budgets.append(float(budget_ms))  # floats: what the compiled charge reads
        self._stale += 1
        self._gap_known = False
        if busy:
            self._count_now += 1

    def streaming(self, now: float, gap_s: float) -> bool:
        """Are requests arriving at `now`: the last two arrivals less than `gap_s` apart, the
        later of them less than `gap_s` ago?"""
        times = self._times
        return len(times) >= 2 and now - times[-1] < gap_s and times[-1] - times[-2] < gap_s

    def busy_ended(self, busy_ms: float) -> None:
        """The running batch ended after `busy_ms`: fold its arrivals into the busy-time rate."""
        periods = self._periods
        periods.append((busy_ms, self._count_now))
        self._busy_ms += busy_ms
        self._busy_count += self._count_now
        self._count_now = 0
        # keep the shortest recent run of periods with _BUSY_ARRIVALS arrivals (at most _BUSY_PERIODS)
        while len(periods) > _MIN_BUSY_PERIODS and (
            len(periods) > _BUSY_PERIODS or self._busy_count - periods[0][1] >= _BUSY_ARRIVALS
        ):
            ms, count = periods.popleft()
            self._busy_ms -= ms
            self._busy_count -= count

    def busy_gap_ms(self) -> float | None:
        """Time between arrivals while the worker is busy, in ms (inf: none arrived during
        the recent busy periods). Before 4 busy periods, the gap between all recent arrivals
        (`gap_ms`) stands in — known after 5 arrivals, so only a burst that arrives while
        the first batches run is priced that early; a client that waits for each answer
        has had 4 busy periods by then. None while neither is known."""
        if len(self._periods) < _MIN_BUSY_PERIODS or self._busy_ms <= 0:
            return self.gap_ms()
        return self._busy_ms / self._busy_count if self._busy_count else math.inf

    def gap_ms(self) -> float | None:
        """Typical time between the recent arrivals, in ms: the median gap / ln 2, which is
        the mean gap of a Poisson stream and, for bursty arrivals, the gap inside a burst
        (idle periods between bursts do not dilute it). None before 5 arrivals, or when
        they came all at once."""
        if not self._gap_known:
            self._gap, self._gap_known = self._median_gap_ms(), True
        return self._gap

    def _median_gap_ms(self) -> float | None:
        times = self._times
        if len(times) < min(_MIN_ARRIVALS, times.maxlen):
            return None
        gaps = self._sorted_gaps
        if not gaps:  # a window of one arrival has no gap
            return None
        median = gaps[len(gaps) // 2]
        return median * 1e3 / _LN2 if median > 0 else None

    def blocked(self, busy_ms: float, service_ms: float) -> float:
        """Expected arrivals a busy period of `busy_ms` makes miss their budget, when the
        fastest service they could get after it takes `service_ms` (0 before the rate is
        known, and when nothing arrives while the worker is busy)."""
        return self.blocked_curve(service_ms)(busy_ms)

    def blocked_curve(self, service_ms: float) -> Callable[[float], float]:
        """`blocked(·, service_ms)` as a function of the busy period, with the rate and the
        sorted sample bound once: what one scheduling decision evaluates many times."""
        bound = self._bound(service_ms)
        if bound is None:
            return _none_blocked
        budgets, prefix, k0, below, scale = bound
        right = bisect.bisect_left

        def curve(busy_ms: float) -> float:
            if busy_ms <= 0:
                return 0.0
            end = busy_ms + service_ms
            k1 = right(budgets, end, k0)  # miss when arriving late enough
            return (k0 * busy_ms + (k1 - k0) * end - (prefix[k1] - below)) * scale

        return curve

    def charge_curve(self, service_ms: float, sat_weight: float) -> Callable[[float, float, float], float]:
        """`busy_charge` over `blocked_curve(service_ms)` as one function of (ms, rest_ms,
        fluid_ms), the same value bit for bit: both curves inlined, since one decision
        prices many batches and a Python call costs as much as the curve itself — compiled
        when `elastic.serving._front_search` is built (serving/front_search.py)."""
        bound = self._bound(service_ms)
        if bound is None:
            return _no_charge
        budgets, prefix, k0, below, scale = bound
        native = front_search.native
        if native is not None:
            return native.ChargeCurve(budgets, prefix, k0, below, scale, service_ms, sat_weight)
        right = bisect.bisect_left

        def charge(ms: float, rest_ms: float, fluid_ms: float) -> float:
            sat = 0.0
            busy = ms + fluid_ms
            if sat_weight and busy > 0:
                end = busy + service_ms
                k1 = right(budgets, end, k0)
                sat = sat_weight * ((k0 * busy + (k1 - k0) * end - (prefix[k1] - below)) * scale)
            busy = ms + rest_ms
            if busy <= 0:
                return 0.0 + sat
            end = busy + service_ms
            k1 = right(budgets, end, k0)
            return (k0 * busy + (k1 - k0) * end - (prefix[k1] - below)) * scale + sat

        return charge

    def _bound(self, service_ms: float) -> tuple[list[float], list[float], int, float, float] | None:
        """What the blocked curve at `service_ms` reads: (sorted budgets, their prefix sums,
        k0 = how many can never make it, their sum, 1 / (count × busy-time gap)); None while
        the rate is unknown or nothing arrives during busy periods."""
        gap = self.busy_gap_ms()
        if gap is None or gap == math.inf:
            return None
        if self._stale >= min(self._refresh, len(self._sorted)) or not self._sorted:  # doubling at first
            self._rebuild()
        budgets, prefix = self._sorted, self._prefix
        k0 = bisect.bisect_right(budgets, service_ms)  # can never make it: the whole busy period
        return budgets, prefix, k0, prefix[k0], 1.0 / (len(budgets) * gap)

    def _rebuild(self) -> None:
        budgets = self._sorted = sorted(self._budgets)
        finite = bisect.bisect_left(budgets, math.inf)  # best effort (inf) sorts last and adds nothing
        prefix = [0.0, *accumulate(budgets[:finite])]
        self._prefix = prefix + [prefix[-1]] * (len(budgets) - finite)
        self._stale = 0


def _none_blocked(busy_ms: float) -> float:
    return 0.0


def _no_charge(ms: float, rest_ms: float, fluid_ms: float) -> float:
    return 0.0


def busy_charge(
    blocked: Callable[[float], float], sat_weight: float, ms: float, rest_ms: float, fluid_ms: float
) -> float:
    """Arrivals a batch of `ms` costs, from one decision's `blocked` curve
    (`Demand.blocked_curve`): those its busy period, with `rest_ms` of queue behind it, turns
    away, plus `sat_weight` × those it displaces in saturation, where the queue behind it holds
    `fluid_ms` of full-batch work (`BudgetScheduler.saturation_weight`)."""
    sat = sat_weight * blocked(ms + fluid_ms) if sat_weight else 0.0
    return blocked(ms + rest_ms) + sat
