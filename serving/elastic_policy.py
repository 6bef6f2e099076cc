"""`ElasticPolicy` ("elastic", the default): the most accuracy delivered within deadlines.

For every batch size b and eligible subnet s whose predicted latency meets the batch's
deadline, the policy scores

    score(s, b) = (members served in time) × acc(s)
                  + Σ acc(fastest) over the next `horizon` queued requests (4 × max batch)
                    that still make their deadline if served afterwards, in full batches,
                    by the fastest eligible subnet

and takes the best score (ties: larger batch, then more accurate, then faster). With one
request queued this is "the most accurate subnet that meets its deadline"; with a backlog
it trades accuracy for batch size exactly when serving the head alone would make later
requests miss. The look-ahead is a lower bound in the spirit of Clockwork's (OSDI'20)
feasibility checks and INFaaS's (ATC'21) variant selection under SLOs.

On a `BudgetScheduler` (per-batch-size Pareto fronts, `best_within`) the decision takes a
binary search per batch size instead of a loop over subnets (`_OnFronts`), and the
look-ahead is a hard constraint rather than a score: for every batch size b it computes
the latest end of the batch that keeps every planned request behind it on time (those
requests served in full batches on the fastest eligible subnet, in order), and takes the
most accurate subnet that ends by then and by the batch's own deadline; among batch
sizes, the most accuracy delivered (rest counted at the fastest subnet's accuracy). A
request is so moved to a cheaper subnet exactly when the more accurate one would make an
admitted request miss. When the quick look-ahead finds no choice that keeps everyone on
time, it plans the rest exactly (the engine's plan splits batches where deadlines demand);
when no choice does (a prediction went wrong), the whole head runs on the fastest subnet:
the worker's best rate, as a static policy serves.

What a request left for a later batch is worth: the look-ahead counts the rest at the
fastest subnet's accuracy, a lower bound that left a loose-budget request indifferent
between riding in a tight request's batch on the fastest subnet and waiting for a batch of
its own on an accurate one — and ties went to the larger batch, so loose requests rode
along on the fastest subnet. A request the batch leaves behind is credited with what it can
still get later when that beats the batch's subnet (`_OnFronts.later_accuracies`): the most
accurate subnet whose full batch, started after one full batch on the fastest subnet, ends
by its deadline, provided full batches on it keep up with the recent arrivals on at most
`later_utilisation` of the worker — where capacity binds, waiting buys nothing, and the
credit vanishes.

It also prices the busy period (docs/serving.md, "The price of a busy period"): a forward
cannot be interrupted, so a long batch turns away the tight-budget requests that arrive
while it runs. From the rate of arrivals while batches run and the recent budgets
(`serving/demand.py`) the scheduler predicts how many arrivals a busy period of T ms
blocks; each is charged the fastest subnet's accuracy (what it would have delivered), for
the batch plus the queue behind it. In saturation worker time is itself answers lost
(`BudgetScheduler.displaced_per_ms`, `busy_charge`): the work of the batch and of the
queue behind it (as its share of full batches) displaces arrivals at the worker's
throughput, and those whose budgets it outlasts are charged too, so a short batch that
saves one tight request at the cost of throughput loses to the full one, while a burst
whose budgets outlast the backlog costs nothing. Among batch sizes and then among the batch's subnets (a
binary search on the front's concave hull) the policy maximises accuracy delivered minus
these charges: at moderate load it moves to cheaper subnets before any deadline forces
it; at light load, or for clients that wait for each answer (nothing arrives while their
batch runs), the charges vanish.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from itertools import accumulate

from elastic.errors import ConfigError

from .decision import CostView, Decision, Policy, prefixes
from .request import Request

_INF = math.inf
_NO_FLOOR = -math.inf
# share of the worker a credited later subnet's full batches may take at the arrival rate
# (`later_utilisation`; `elastic bench ride_along` compares 0.6, this and no cap)
LATER_UTILISATION = 0.8


class ElasticPolicy(Policy):
    """Most accuracy within deadlines, with a one-step look-ahead over the backlog.

    Args:
        horizon: how many requests after the batch the look-ahead considers (default:
            4 × max batch).
        utilisation: on a scheduler that reports the arrival rate, once more than a full
            batch is queued, a batch of b requests may take at most this share of the
            b × mean gap in which b more arrive, on average (its expected time, without
            the tail margin its deadlines are planned with), unless only the fastest subnet makes the
            deadlines: under load the policy moves to cheaper subnets as soon as a backlog
            forms, before deadlines force it.
        blocking_price: weight of the busy-period charge, in units of the fastest
            subnet's accuracy per blocked arrival (1: what the arrival would have
            delivered; 0: no charge, the most accurate subnet that keeps deadlines).
        later_utilisation: a request left for a later batch is credited with the most
            accurate subnet whose full batches would take at most this share of the worker
            at the recent arrival rate (and still meet its deadline); 0: credited with the
            fastest subnet's accuracy, as before; inf: any subnet its deadline allows
            (docs/serving.md, "Batching"; `elastic bench ride_along`).

    Raises:
        ConfigError: `later_utilisation` is negative or not a number.
    """

    name = "elastic"

    def __init__(
        self,
        horizon: int | None = None,
        utilisation: float = 0.9,
        blocking_price: float = 1.0,
        later_utilisation: float = LATER_UTILISATION,
    ):
        if isinstance(later_utilisation, bool) or not later_utilisation >= 0:
            raise ConfigError(f"later_utilisation must be a number >= 0, got {later_utilisation!r}")
        self.horizon = horizon
        self.utilisation = utilisation
        self.blocking_price = blocking_price
        self.later_utilisation = later_utilisation

    def choose(self, queue: Sequence[Request], now: float, costs: CostView, max_batch: int) -> Decision | None:
        if hasattr(costs, "best_within"):
            fast = costs.fastest(None, max_batch)
            return _OnFronts(self, queue, now, costs, max_batch, fast).choose() if fast is not None else None
        return self._choose_generic(queue, now, costs, max_batch)

    def _choose_generic(self, queue: Sequence[Request], now: float, costs: CostView, max_batch: int) -> Decision | None:
        """Any `CostView`: score every (prefix, eligible subnet) with the look-ahead curve."""
        horizon = self.horizon if self.horizon is not None else 4 * max_batch
        best: tuple | None = None
        decision = None
        for p in prefixes(queue, now, costs, max_batch):
            rest_score = self.rest_curve(queue[p.size : p.size + horizon], costs, max_batch)
            for s in costs.eligible(p.min_accuracy):
                t = costs.predict_ms(s, p.size)
                end = now + t / 1e3
                if end > p.deadline:
                    continue
                acc = costs.accuracy(s)
                # ties: bigger batch; then most accurate if anyone can be on time, else fastest
                key = (p.hard * acc + rest_score(end), p.size, acc if p.hard else -t, -t)
                if best is None or key > best:
                    best, decision = key, Decision(s, p.size)
        return decision

    @staticmethod
    def rest_curve(rest: Sequence[Request], costs: CostView, max_batch: int) -> Callable[[float], float]:
        """Accuracy the requests in `rest` still get if served from time `end` on, as a
        function of `end`, assuming full batches on the fastest eligible subnets.

        Request r in the k-th such batch is on time iff end + offset_k <= deadline_r, i.e.
        end <= deadline_r - offset_k: the curve is a step function, built once per batch size
        and evaluated per candidate subnet with a binary search.
        """
        thresholds: list[tuple[float, float]] = []  # (latest end that keeps r on time, accuracy)
        offset = 0.0
        for i in range(0, len(rest), max_batch):
            chunk = rest[i : i + max_batch]
            floors = [r.min_accuracy for r in chunk if r.min_accuracy is not None]
            fastest = costs.fastest(max(floors) if floors else None, len(chunk))
            if fastest is None:
                continue
            subnet, ms = fastest
            offset += ms / 1e3
            acc = costs.accuracy(subnet)
            thresholds += [(r.deadline - offset, acc) for r in chunk]
        thresholds.sort()
        keys = [tau for tau, _ in thresholds]
        suffix = [0.0] * (len(thresholds) + 1)
        for k in range(len(thresholds) - 1, -1, -1):
            suffix[k] = suffix[k + 1] + thresholds[k][1]
        return lambda end: suffix[bisect.bisect_left(keys, end)]


class _OnFronts:
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
        top = costs.best_within(max_batch, _NO_FLOOR, _INF)
        drain_ms = -(-len(queue) // max_batch) * top[1] if top is not None else _INF
        if gap is not None and drain_ms <= (self.suffix_min[0] - self.now) * 1e3:
            return None
        return gap

    def pick(self, b: int, f: float, window_ms: float):
        """Most accurate within the window and within the batch's share of time at the
        arrival rate (b requests arrive every b × gap: a batch that takes longer on average
        makes the queue grow; the share bounds its expected time, the window its planned
        time); else the fastest that makes the window."""
        costs, gap = self.costs, self.gap
        if gap is None or gap * b * self.utilisation >= window_ms:
            return costs.best_within(b, f, window_ms)
        found = costs.best_within(b, f, gap * b * self.utilisation, expected=True)
        if found is not None:  # the window's bound binds when it is the tighter one
            return found if found[1] <= window_ms else costs.best_within(b, f, window_ms)
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
        acc_of, acc_fast, max_batch, best_within = self.acc_of, self.acc_fast, self.max_batch, costs.best_within
        later = [0.0] * n
        for i in range(1, n):
            d = hard[i]
            if d < _INF:
                window_ms = (d - now - lead) * 1e3
                if window_ms <= cap_ms:
                    found = best_within(max_batch, floors[i], window_ms)
                else:  # the rate bounds the mean (`expected`), the deadline the planned time
                    found = best_within(max_batch, floors[i], cap_ms, expected=True)
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

    def rests_ms(self) -> list[tuple[float, float]]:
        """[b] = how long the queue behind a batch of b keeps the worker busy after it: (ms
        in full batches on the fastest subnet and a partial one, ms as its share of full
        batches), b = 1 .. n ([0] unused)."""
        queued, max_batch, fast_ms, fast_at = len(self.queue), self.max_batch, self.fast[1], self.fast_at
        rests = [(0.0, 0.0)]
        for b in range(1, self.n + 1):
            full, part = divmod(queued - b, max_batch)
            rests.append((full * fast_ms + (fast_at[part][1] if part else 0.0), (queued - b) / max_batch * fast_ms))
        return rests

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
        deferred: list[tuple] = []  # (upper bound of the key, subnet, members, floor, the rest's share, window ms)
        hard_b = soft_b = 0
        soft_d = _INF  # earliest deadline of the best-effort members (they never bind)
        latest_ends = self.latest_ends()
        later = self.later_accuracies()
        pick = self.pick if self.gap is not None else costs.best_within  # no backlog rate: the window alone
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
            window = (min(limit, soft_d) - now) * 1e3
            found = pick(b, f, window) if soft_b else None
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
                    deferred.append(
                        ((1, members * acc + rest_on_fast, b, acc, -t), sid, members, f, rest_on_fast, window)
                    )
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
                found = costs.best_within(b, f, (d - now) * 1e3) if hard_b else None
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
            rests, charge, fast_at = self.rests_ms(), self.charge, self.fast_at
            if self.block < 1.0:
                charge = None  # `charged` instead: the window decides whether the batch can pause
            for bound, sid, members, f, rest_on_fast, window in deferred:
                if self.prune and best is not None and bound <= best:
                    break  # neither this size nor any after it can win
                b, acc, neg_t = bound[2:]
                rest_ms, fluid_ms = rests[b]
                # the accuracy delivered less the busy-period and saturation charges; in
                # saturation the fastest subnet at b may be worth more (`sid` stays the top of
                # the range `best_priced` searches)
                cost = charge(-neg_t, rest_ms, fluid_ms) if charge else self.charged(-neg_t, window, rest_ms, fluid_ms)
                value = members * acc - price * cost
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
                key = (1, value + rest_on_fast, b, acc, neg_t)
                if best is None or key > best:
                    best, decision = key, (sid, b)
                    priced = (b, f, sid, members, rest_ms, fluid_ms, window)
        if (best is None or best[0] == 0) and hasattr(costs, "plan_late"):
            exact = self.fewest_late()
            if exact is not None:
                return exact
        if priced is not None:
            # the batch's busy period turns away arrivals with tight budgets: a cheaper subnet
            # of the same batch wins when its accuracy loss is smaller than what they would lose
            b, f, sid, members, rest_ms, fluid_ms, window = priced
            charge, charged = self.charge, self.charged
            if self.block < 1.0:
                found = costs.best_priced(b, f, sid, members, price, lambda ms: charged(ms, window, rest_ms, fluid_ms))
            else:
                found = costs.best_priced(b, f, sid, members, price, lambda ms: charge(ms, rest_ms, fluid_ms))
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
                options.add(costs.best_within(b, f, (d - now) * 1e3))
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
