"""`OnFronts`: one decision of `ElasticPolicy` on a `BudgetScheduler`'s per-batch-size fronts.

What the policy decides is in serving/elastic_policy.py; this is how it decides it on the
scheduler's fronts without a loop over subnets: per batch size b a binary search for the
most accurate subnet that ends by the batch's deadline and by the latest end that keeps the
planned rest on time (`latest_ends`), the busy-period and saturation charges for the sizes
that can still win (`charged`, pruned by an upper bound), the credit for requests the batch
leaves behind (`later_accuracies`), and among the batch's subnets the best priced one on the
front's concave hull (`BudgetScheduler.best_priced`). When no choice keeps everyone on time,
the rest is planned exactly (`fewest_late`), and failing that the worker's best rate decides
(`throughput`). Pure Python over the fronts' `FrontQuery` (compiled when built:
serving/front_search.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from .decision import Decision
from .request import Request

if TYPE_CHECKING:
    from .elastic_policy import ElasticPolicy

_INF = math.inf
_NO_FLOOR = -math.inf


class OnFronts:
    """One decision on a `BudgetScheduler`'s per-batch-size fronts: O(max_batch × (horizon /
    max_batch + log subnets)), no loop over subnets. `fast` is (id, ms) of the fastest
    subnet at a full batch."""

    prune = True  # skip the batch sizes whose bound cannot win (False: price every one, same answer)

    def __init__(self, policy: ElasticPolicy, queue: Sequence[Request], now: float, costs, max_batch: int, fast):
        self.queue, self.now, self.costs, self.max_batch, self.fast = queue, now, costs, max_batch, fast
        self.utilisation = policy.utilisation
        self.later_utilisation = policy.later_utilisation
        horizon = policy.horizon if policy.horizon is not None else 4 * max_batch
        self.hard, self.floors = hard, floors = costs.queue_arrays(queue)
        self.n = min(len(queue), max_batch)
        self.h = h = min(len(queue), max_batch + horizon)
        self.window = window = hard[:h]
        suffix_min = list(accumulate(reversed(window), min))
        suffix_min.reverse()
        self.suffix_min = suffix_min  # [i] = earliest binding deadline among positions i..h-1
        self.f_rest = max(floors[:h])
        self.t_full = fast[1] / 1e3
        # the fastest subnet (no floor) at each batch size, read many times per decision
        row = costs.fastest_at()
        self.fast_at = (
            row if len(row) > max_batch else [None, *(costs.fastest(None, b) for b in range(1, max_batch + 1))]
        )
        # `best_within` bound to this decision's predictions (compiled when built): asked ~10 times
        self.best_within = costs.front_query().best_within if hasattr(costs, "front_query") else costs.best_within
        self.acc_of = costs.accuracies()  # id -> accuracy, read many times per decision
        self.acc_fast = self.acc_of[fast[0]]
        self.n_hard = h - window.count(_INF)
        # the busy period's price: what the arrivals it turns away would have delivered
        price = policy.blocking_price * self.acc_fast if hasattr(costs, "blocked_curve") else 0.0
        gap = costs.busy_arrival_gap_ms() if price > 0 else None
        if gap in (None, _INF):
            price = 0.0  # unknown, or nothing arrives while a batch runs: nobody to turn away
        self.price = price
        # in saturation worker time is the scarce resource: each ms displaces answers
        self.theta = costs.displaced_per_ms() if price else 0.0
        self.sat_weight = costs.saturation_weight(self.theta) if price else 0.0
        # (ms, rest_ms, fluid_ms) -> arrivals (`busy_charge`), bound once for this decision
        self.charge = costs.charge_curve(self.sat_weight) if price else None
        # with preemption a tight arrival waits for one stage of a batch when the urgent
        # path admits it, else all of it (`block_fraction`: the expected share)
        self.block = costs.block_fraction() if price and hasattr(costs, "block_fraction") else 1.0
        self.fast1 = self.fast_at[1][1]
        # and a batch pauses only with room for an urgent one: plan each with that room first
        self.reserve = self.fast1 if self.block < 1.0 else 0.0
        self.gap = self._backlog_gap()

    def _backlog_gap(self) -> float | None:
        """The arrival gap (ms) once a backlog forms (more than a full batch queued) that the
        most accurate subnet could not drain before the earliest deadline; else None."""
        queue, costs, max_batch = self.queue, self.costs, self.max_batch
        if len(queue) <= max_batch or not hasattr(costs, "arrival_gap_ms"):
            return None
        gap = costs.arrival_gap_ms()
        top = self.best_within(max_batch, _NO_FLOOR, _INF)
        drain_ms = -(-len(queue) // max_batch) * top[1] if top is not None else _INF
        if gap is not None and drain_ms <= (self.suffix_min[0] - self.now) * 1e3:
            return None
        return gap

    def pick(self, b: int, f: float, window_ms: float):
        """Most accurate within the window and within the batch's share of time at the
        arrival rate (b requests arrive every b × gap: a batch that takes longer on average
        makes the queue grow; the share bounds its expected time, the window its planned
        time); else the fastest that makes the window."""
        costs, gap, best_within = self.costs, self.gap, self.best_within
        if gap is None or gap * b * self.utilisation >= window_ms:
            return best_within(b, f, window_ms)
        found = best_within(b, f, gap * b * self.utilisation, expected=True)
        if found is not None:  # the window's bound binds when it is the tighter one
            return found if found[1] <= window_ms else best_within(b, f, window_ms)
        fastest = costs.fastest(None if f == _NO_FLOOR else f, b)
        return fastest if fastest is not None and fastest[1] <= window_ms else None

    def latest_ends(self) -> list[float]:
        """[b] = latest end of a batch of the first b that keeps the planned rest on time
        (b = 1 .. n; [0] unused): the rest from position b on, in batches of max_batch on
        the fastest subnet its floors allow, must each end by their earliest deadline."""
        h, n, max_batch, window = self.h, self.n, self.max_batch, self.window
        if self.f_rest == _NO_FLOOR:  # every rest batch full on the fastest subnet: one pass from the back
            suffix_min, t_full = self.suffix_min, self.t_full
            ends = [_INF] * (h + max_batch)
            for k in range(h - 1, 0, -1):
                later = ends[k + max_batch]
                ends[k] = (suffix_min[k] if suffix_min[k] < later else later) - t_full
            return ends[: n + 1]
        floors, costs = self.floors, self.costs
        ends = [_INF]
        for b in range(1, n + 1):
            latest, k, c = _INF, b, 0.0
            while k < h:
                m = min(max_batch, h - k)
                ff = max(floors[k : k + m])
                found = costs.fastest(None if ff == _NO_FLOOR else ff, m)
                c += found[1] / 1e3 if found is not None else _INF
                v = min(window[k : k + m]) - c
                if v < latest:
                    latest = v
                k += m
            ends.append(latest)
        return ends

    def later_accuracies(self) -> list[float]:
        """[i] = the accuracy queued request i (1 .. n-1) can still get if this batch leaves it
        for later, where that beats the fastest subnet's; else 0 ([0] unused: the head is in
        every batch). The most accurate subnet whose full batch, after one full batch on the
        fastest, ends by the request's deadline, among those whose full batches keep up with
        the recent arrival rate on `later_utilisation` of the worker (the module docstring).
        At most n - 1 binary searches; empty when no request can gain."""
        n, costs = self.n, self.costs
        if n < 2 or not self.later_utilisation or not hasattr(costs, "arrival_gap_ms"):
            return []
        gap = costs.arrival_gap_ms()
        cap_ms = gap * self.max_batch * self.later_utilisation if gap is not None and gap > 0 else 0.0
        if cap_ms < self.t_full * 1e3:  # not even the fastest subnet keeps up: nothing to gain
            return []
        hard, floors, now, lead = self.hard, self.floors, self.now, self.t_full
        acc_of, acc_fast, max_batch, best_within = self.acc_of, self.acc_fast, self.max_batch, self.best_within
        later = [0.0] * n
        capped: dict[float, tuple[int, float] | None] = {}  # floor -> the search the rate bounds
        for i in range(1, n):
            d = hard[i]
            if d < _INF:
                window_ms = (d - now - lead) * 1e3
                if window_ms <= cap_ms:
                    found = best_within(max_batch, floors[i], window_ms)
                else:  # the rate bounds the mean (`expected`), the deadline the planned time
                    f = floors[i]
                    if f in capped:
                        found = capped[f]
                    else:
                        found = capped[f] = best_within(max_batch, f, cap_ms, expected=True)
                if found is not None and found[1] <= window_ms and acc_of[found[0]] > acc_fast:
                    later[i] = acc_of[found[0]]
        return later if any(later) else []

    def left_credit(self, later: list[float], b: int, acc: float) -> float:
        """What the requests a batch of b on a subnet of accuracy `acc` leaves behind gain over
        the fastest subnet's accuracy by waiting: only those that can get more than `acc`
        later (the others would do as well riding along, and batching is cheaper)."""
        credit = 0.0
        for a in later[b:]:
            if a > acc:
                credit += a - self.acc_fast
        return credit

    def with_room(self, pick: Callable) -> Callable:
        """`pick` within the window less the room an urgent batch needs (`reserve`), so that the
        batch can pause for one; else within the whole window."""
        reserve = self.reserve

        def picked(b: int, f: float, window_ms: float):
            found = pick(b, f, window_ms - reserve)
            return found if found is not None else pick(b, f, window_ms)

        return picked

    def charged(self, ms: float, window_ms: float, rest_ms: float, fluid_ms: float) -> float:
        """Arrivals a batch of `ms` that must end within `window_ms` costs (`charge`). With
        preemption, a batch with room in its window for an urgent batch of one makes a
        tight arrival wait for one stage of it (`block`), not all of it; its work still
        displaces arrivals in saturation all the same."""
        if self.block < 1.0 and window_ms - ms >= self.fast1:
            wait = ms * self.block
            return self.charge(wait, rest_ms, fluid_ms + ms - wait)
        return self.charge(ms, rest_ms, fluid_ms)

    def choose(self) -> Decision | None:
        """The best (subnet, batch size) by the key (on time?, value, size, accuracy, speed).

        Per batch size b the subnet is `pick`ed first; its value (`value`: the busy-period
        charges) is computed only while it can still win: charges are never negative, so
        members × accuracy bounds the value from above, and the sizes are priced from the
        highest bound down until a bound cannot beat the best key found. Keys differ in b,
        so the best is the same in any order of evaluation.
        """
        queue, now, costs = self.queue, self.now, self.costs
        hard, floors = self.hard, self.floors
        prefix_deadline = list(accumulate(hard[: self.n], min))
        prefix_floor = list(accumulate(floors[: self.n], max))
        acc_fast, n_hard, price, acc_of = self.acc_fast, self.n_hard, self.price, self.acc_of
        best: tuple | None = None
        decision = priced = None
        # (upper bound of the key, subnet, members, floor, the rest's share, window ms, b, accuracy, ms)
        deferred: list[tuple] = []
        hard_b = soft_b = 0
        soft_d = _INF  # earliest deadline of the best-effort members (they never bind)
        latest_ends = self.latest_ends()
        later = self.later_accuracies()
        pick = self.pick if self.gap is not None else self.best_within  # no backlog rate: the window alone
        if self.reserve:
            pick = self.with_room(pick)
        for b in range(1, self.n + 1):
            if hard[b - 1] < _INF or not queue[b - 1].best_effort:
                hard_b += 1  # an unbounded budget (deadline inf) is served on time by any subnet
            else:
                soft_b += 1
                soft_d = min(soft_d, queue[b - 1].deadline)
            latest = latest_ends[b]
            d = prefix_deadline[b - 1]
            f = prefix_floor[b - 1]
            limit = d if d < latest else latest
            if soft_b:
                window = (min(limit, soft_d) - now) * 1e3
                found = pick(b, f, window)
            else:
                found = None
            members = hard_b + soft_b
            if found is None and hard_b:
                window = (limit - now) * 1e3
                found = pick(b, f, window)
                members = hard_b
            if found is not None:  # everyone in the batch on time (best-effort members count like the rest)
                sid, t = found
                acc = acc_of[sid]
                rest_on_fast = (n_hard - hard_b) * acc_fast
                if later:
                    rest_on_fast += self.left_credit(later, b, acc)
                if price and members:
                    bound = (1, members * acc + rest_on_fast, b, acc, -t)
                    deferred.append((bound, sid, members, f, rest_on_fast, window, b, acc, t))
                    continue
                key = (1, members * acc + rest_on_fast, b, acc, -t)
            elif not hard_b:  # only late best-effort members: the fastest subnet that keeps the rest on time
                found = costs.fastest(None if f == _NO_FLOOR else f, b)
                if found is not None and now + found[1] / 1e3 <= latest:
                    sid, t = found
                    key = (1, (n_hard - hard_b) * acc_fast, b, -t, -t)
                else:
                    found = None
            if found is None:
                # nobody can keep everyone on time: serve the most of this prefix on time
                found = self.best_within(b, f, (d - now) * 1e3) if hard_b else None
                if found is None:
                    if hard_b:
                        continue
                    found = costs.fastest(None if f == _NO_FLOOR else f, b)
                    if found is None:
                        continue
                sid, t = found
                key = (0, hard_b, b, acc_of[sid] if hard_b else -t, -t)
            if best is None or key > best:
                best, decision = key, (sid, b)
        if deferred:
            deferred.sort(reverse=True)  # by bound: the bounds differ in b, so nothing after them is compared
            charge, fast_at, prune = self.charge, self.fast_at, self.prune
            queued, max_batch, fast_ms = len(queue), self.max_batch, self.fast[1]
            if self.block < 1.0:
                charge = None  # `charged` instead: the window decides whether the batch can pause
            for bound, sid, members, f, rest_on_fast, window, b, acc, t in deferred:
                if prune and best is not None and bound <= best:
                    break  # neither this size nor any after it can win
                # how long the queue behind the batch keeps the worker busy after it: in full
                # batches on the fastest subnet and a partial one, and as its share of full batches
                full, part = divmod(queued - b, max_batch)
                rest_ms = full * fast_ms + (fast_at[part][1] if part else 0.0)
                fluid_ms = (queued - b) / max_batch * fast_ms
                # the accuracy delivered less the busy-period and saturation charges; in
                # saturation the fastest subnet at b may be worth more (`sid` stays the top of
                # the range `best_priced` searches)
                cost = charge(t, rest_ms, fluid_ms) if charge else self.charged(t, window, rest_ms, fluid_ms)
                value = own = members * acc - price * cost
                alt = fast_at[b] if f == _NO_FLOOR else costs.fastest(f, b)
                if alt is not None and alt[0] != sid:
                    alt_acc = members * acc_of[alt[0]]
                    if alt_acc > value:  # a charge is never negative: else the fastest cannot do better
                        cost = (
                            charge(alt[1], rest_ms, fluid_ms)
                            if charge
                            else self.charged(alt[1], window, rest_ms, fluid_ms)
                        )
                        value = max(value, alt_acc - price * cost)
                key = (1, value + rest_on_fast, b, acc, -t)
                if best is None or key > best:
                    best, decision = key, (sid, b)
                    priced = (b, f, sid, members, rest_ms, fluid_ms, window, (own, t))
        if (best is None or best[0] == 0) and hasattr(costs, "plan_late"):
            exact = self.fewest_late()
            if exact is not None:
                return exact
        if priced is not None:
            # the batch's busy period turns away arrivals with tight budgets: a cheaper subnet
            # of the same batch wins when its accuracy loss is smaller than what they would lose
            b, f, sid, members, rest_ms, fluid_ms, window, known = priced
            charge, charged = self.charge, self.charged
            if self.block < 1.0:
                found = costs.best_priced(
                    b, f, sid, members, price, lambda ms: charged(ms, window, rest_ms, fluid_ms), known
                )
            else:
                found = costs.best_priced(b, f, sid, members, price, lambda ms: charge(ms, rest_ms, fluid_ms), known)
            decision = (found[0], b)
        return Decision(*decision) if decision is not None else None

    def fewest_late(self) -> Decision | None:
        """When the quick look-ahead finds no batch that keeps every planned request on time.

        It assumes full batches, while the engine's plan splits them where deadlines demand:
        so try, per batch size, the most accurate subnet that makes the batch's deadline and
        the fastest one, plan the rest exactly (`plan_late`), and take the most accurate
        choice that leaves nobody late. When every choice leaves someone late, predictions
        went wrong and the queue holds more than the worker can serve in time: then
        throughput decides (`throughput`). Taking the fewest late of one plan there chose
        small batches on a count that swung by ten with a batch size or two, and the lost
        capacity cost more requests than it saved (simulated demo, on/off bursts at 1.25×:
        92 shed against 5 for the smallest anchor served statically).
        """
        queue, now, costs, hard, floors = self.queue, self.now, self.costs, self.hard, self.floors
        floored = max(floors) > _NO_FLOOR
        best: tuple | None = None
        decision = None
        d, f, hard_b = _INF, _NO_FLOOR, 0
        for b in range(1, min(len(queue), self.max_batch) + 1):
            d = min(d, hard[b - 1])
            f = max(f, floors[b - 1])
            hard_b += hard[b - 1] < _INF
            options = {costs.fastest(None if f == _NO_FLOOR else f, b)}
            if d < _INF:
                options.add(self.best_within(b, f, (d - now) * 1e3))
            for found in options:
                if found is None:
                    continue
                sid, t = found
                end = now + t / 1e3
                if end > d or costs.plan_late(hard[b:], floors[b:] if floored else None, end):
                    continue  # someone is late
                acc = costs.accuracy(sid)
                key = (hard_b * acc, b, acc, -t)
                if best is None or key > best:
                    best, decision = key, Decision(sid, b)
        return decision if decision is not None else self.throughput()

    def throughput(self) -> Decision | None:
        """The largest batch from the head on the fastest subnet its members' floors allow:
        the most requests per second of worker time, what a static policy serves."""
        n = min(len(self.queue), self.max_batch)
        f = max(self.floors[:n])
        found = self.costs.fastest(None if f == _NO_FLOOR else f, n)
        return Decision(found[0], n) if found is not None else None
