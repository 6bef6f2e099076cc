"""Scheduling policies: which subnet, on how many of the most urgent requests.

Every policy sees the queue in scheduling order (priority level, then earliest deadline
first) and returns a `Decision`: a subnet and a batch size `b`, meaning "run the first `b`
queued requests". Because the queue is in deadline order, the batch's binding deadline is
that of its most urgent member that can still make it; best-effort requests already past
hope ride along without constraining the batch. Policies are pure Python over a `CostView`
(predicted latency and accuracy per subnet), so they can be tested on synthetic tables.

- `ElasticPolicy` ("elastic", default): maximises the accuracy delivered within deadlines,
  looking one step ahead. For every batch size b and eligible subnet s whose predicted
  latency meets the batch's deadline, it scores

      score(s, b) = (members served in time) × acc(s)
                    + Σ acc(fastest) over the next `horizon` queued requests (4 × max batch)
                      that still make their deadline if served afterwards, in full batches,
                      by the fastest eligible subnet

  and takes the best score (ties: larger batch, then more accurate, then faster). With one
  request queued this is "the most accurate subnet that meets its deadline"; with a backlog
  it trades accuracy for batch size exactly when serving the head alone would make later
  requests miss. The look-ahead is a lower bound in the spirit of Clockwork's (OSDI'20)
  feasibility checks and INFaaS's (ATC'21) variant selection under SLOs.
  On a `BudgetScheduler` (which offers per-batch-size Pareto fronts, `best_within`) the
  decision takes a binary search per batch size instead of a loop over subnets, and the
  look-ahead is a hard constraint rather than a score: for every batch size b it computes
  the latest end of the batch that keeps every planned request behind it on time (those
  requests served in full batches on the fastest eligible subnet, in order), and takes the
  most accurate subnet that ends by then and by the batch's own deadline; among batch
  sizes, the most accuracy delivered (rest counted at the fastest subnet's accuracy). A
  request is so moved to a cheaper subnet exactly when the more accurate one would make an
  admitted request miss. Only when no choice keeps everyone on time does it serve the
  largest prefix it can still serve on time.
  It also prices the busy period: a forward cannot be interrupted, so a long batch turns
  away the tight-budget requests that arrive while it runs. From the recent arrival rate
  and budgets (`serving/demand.py`) the scheduler predicts how many arrivals a busy period
  of T ms blocks; each is charged the fastest subnet's accuracy (what it would have
  delivered), for the batch plus the queue behind it. Among batch sizes and then among the
  batch's subnets (a binary search on the front's concave hull) the policy maximises
  accuracy delivered minus that charge, so at moderate load it moves to cheaper subnets
  before any deadline forces it, and at light load the charge is near zero. The rate is
  that of arrivals *while a batch runs*, so clients that wait for each answer are not
  charged for arrivals that cannot happen. In saturation a ms of worker time is itself an
  answer lost (`BudgetScheduler.displaced_per_ms`): that is charged on the batch and on
  the queue behind it as a share of full batches, so a short batch that saves one tight
  request at the cost of throughput loses to the full one.
- `StaticPolicy` ("static:<id>"): always one subnet; batches greedily, as large as every
  member's deadline allows (the fixed-model baseline, like one Triton model instance with
  dynamic batching).
- `SlackFitPolicy` ("slackfit"): SuperServe's SlackFit (Khare et al., NSDI'25), as we read
  it and implement it here: let slack = deadline of the most urgent request − now. Among all
  (subnet, batch) pairs on the Pareto front whose predicted latency fits in the slack, pick
  the one whose latency is closest to the slack — latencies are grouped into buckets, the
  highest bucket that fits wins — and inside that bucket the largest batch, then the most
  accurate subnet. The bucketing is ours (geometric, `bucket_ratio` = 10 % wide), not a
  reproduction of the paper's parameters. Low load leaves large slack, so it picks accurate
  subnets; a backlog shrinks the head's slack and grows the batch, so it moves to faster
  subnets with bigger batches. It does not look past the head request.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from elastic.errors import ConfigError

from .request import Request

_INF = math.inf
_NO_FLOOR = -math.inf


@dataclass(frozen=True)
class Decision:
    """Run `subnet` on the first `size` queued requests."""

    subnet: int
    size: int


class CostView(Protocol):
    """What a policy may ask the scheduler about subnets."""

    def predict_ms(self, subnet: int, batch: int) -> float:
        """Corrected latency prediction of one forward."""
        ...

    def accuracy(self, subnet: int) -> float:
        """The accuracy the scheduler plans with (measured, or a FLOPs proxy)."""
        ...

    def eligible(self, min_accuracy: float | None) -> list[int]:
        """Candidate ids meeting `min_accuracy`, fastest first."""
        ...

    def fastest(self, min_accuracy: float | None, batch: int = 1) -> tuple[int, float] | None:
        """(id, predicted ms) of the fastest candidate meeting `min_accuracy` at `batch`."""
        ...

    def fastest_ms(self, request: Request) -> float:
        """Predicted latency at batch 1 of the fastest subnet `request` may use."""
        ...


@dataclass(frozen=True)
class _Prefix:
    size: int  # b: the first b queued requests
    deadline: float  # earliest deadline among members that can still make theirs (inf: none)
    min_accuracy: float | None  # the strictest accuracy floor among members
    hard: int  # members that can still make their deadline


def prefixes(queue: Sequence[Request], now: float, costs: CostView, max_batch: int) -> Iterator[_Prefix]:
    """Constraints of batching the first b requests, for b = 1..min(len(queue), max_batch)."""
    deadline, floor, hard = math.inf, None, 0
    for b, r in enumerate(queue[:max_batch], 1):
        if not r.best_effort or now + costs.fastest_ms(r) / 1e3 <= r.deadline:
            deadline = min(deadline, r.deadline)
            hard += 1
        if r.min_accuracy is not None:
            floor = r.min_accuracy if floor is None else max(floor, r.min_accuracy)
        yield _Prefix(b, deadline, floor, hard)


class Policy(ABC):
    """Chooses the next batch; see the module docstring for the three policies."""

    name: str = "policy"

    def restrict(self, candidates: list[int]) -> list[int]:
        """The subnets this policy may use, given the Pareto candidates (fastest first)."""
        return candidates

    @abstractmethod
    def choose(self, queue: Sequence[Request], now: float, costs: CostView, max_batch: int) -> Decision | None:
        """The next batch for a non-empty queue, or None to let the scheduler fall back
        to the head request alone on its fastest subnet."""


class ElasticPolicy(Policy):
    """Most accuracy within deadlines, with a one-step look-ahead over the backlog.

    Args:
        horizon: how many requests after the batch the look-ahead considers (default:
            4 × max batch).
        utilisation: on a scheduler that reports the arrival rate, once more than a full
            batch is queued, a batch of b requests may take at most this share of the
            b × mean gap in which b more arrive, unless only the fastest subnet makes the
            deadlines: under load the policy moves to cheaper subnets as soon as a backlog
            forms, before deadlines force it.
        blocking_price: weight of the busy-period charge, in units of the fastest
            subnet's accuracy per blocked arrival (1: what the arrival would have
            delivered; 0: no charge, the most accurate subnet that keeps deadlines).
    """

    name = "elastic"

    def __init__(self, horizon: int | None = None, utilisation: float = 0.9, blocking_price: float = 1.0):
        self.horizon = horizon
        self.utilisation = utilisation
        self.blocking_price = blocking_price

    def choose(self, queue: Sequence[Request], now: float, costs: CostView, max_batch: int) -> Decision | None:
        if hasattr(costs, "best_within"):
            return self._choose_on_fronts(queue, now, costs, max_batch)
        return self._choose_generic(queue, now, costs, max_batch)

    def _choose_on_fronts(self, queue: Sequence[Request], now: float, costs, max_batch: int) -> Decision | None:
        """The decision on a `BudgetScheduler`'s fronts: O(max_batch × (horizon / max_batch
        + log subnets)), no loop over subnets."""
        horizon = self.horizon if self.horizon is not None else 4 * max_batch
        hard, floors = costs.queue_arrays(queue)
        n = min(len(queue), max_batch)
        h = min(len(queue), max_batch + horizon)
        window = hard[:h]
        suffix_min = list(accumulate(reversed(window), min))
        suffix_min.reverse()  # suffix_min[i] = earliest binding deadline among positions i..h-1
        f_rest = max(floors[:h])
        fast = costs.fastest(None, max_batch)
        if fast is None:
            return None
        t_full = fast[1] / 1e3
        acc_fast = costs.accuracy(fast[0])
        n_hard = h - window.count(_INF)
        # the busy period's price: what the arrivals it turns away would have delivered
        price = self.blocking_price * acc_fast if hasattr(costs, "blocked_arrivals") else 0.0
        if price > 0 and costs.busy_arrival_gap_ms() in (None, _INF):
            price = 0.0  # unknown, or nothing arrives while a batch runs: nobody to turn away
        queued = len(queue)
        # in saturation worker time is the scarce resource: each ms displaces answers
        theta = costs.displaced_per_ms() if price else 0.0
        prefix_deadline = list(accumulate(hard[:n], min))
        prefix_floor = list(accumulate(floors[:n], max))
        # the arrival-rate share applies once a backlog forms (more than a full batch queued)
        # that the most accurate subnet could not drain before the earliest deadline
        gap = None
        if len(queue) > max_batch and hasattr(costs, "arrival_gap_ms"):
            gap = costs.arrival_gap_ms()
            top = costs.best_within(max_batch, _NO_FLOOR, _INF)
            drain_ms = -(-len(queue) // max_batch) * top[1] if top is not None else _INF
            if gap is not None and drain_ms <= (suffix_min[0] - now) * 1e3:
                gap = None

        def pick(b: int, f: float, window_ms: float):
            """Most accurate within the window and within the batch's share of time at the
            arrival rate (b requests arrive every b × gap: a batch that takes longer makes
            the queue grow); else the fastest that makes the window."""
            if gap is None or gap * b * self.utilisation >= window_ms:
                return costs.best_within(b, f, window_ms)
            found = costs.best_within(b, f, gap * b * self.utilisation)
            if found is not None:
                return found
            fastest = costs.fastest(None if f == _NO_FLOOR else f, b)
            return fastest if fastest is not None and fastest[1] <= window_ms else None

        best: tuple | None = None
        decision = priced = None
        hard_b = soft_b = 0
        soft_d = _INF  # earliest deadline of the best-effort members (they never bind)
        for b in range(1, n + 1):
            if hard[b - 1] < _INF or not queue[b - 1].best_effort:
                hard_b += 1  # an unbounded budget (deadline inf) is served on time by any subnet
            else:
                soft_b += 1
                soft_d = min(soft_d, queue[b - 1].deadline)
            latest = _INF  # latest end of this batch that keeps the planned rest on time
            if f_rest == _NO_FLOOR:  # every rest batch full, on the fastest subnet
                k, c = b, t_full
                while k < h:
                    v = suffix_min[k] - c
                    if v < latest:
                        latest = v
                    k += max_batch
                    c += t_full
            else:  # accuracy floors: each rest batch on the fastest subnet its members allow
                k, c = b, 0.0
                while k < h:
                    m = min(max_batch, h - k)
                    ff = max(floors[k : k + m])
                    found = costs.fastest(None if ff == _NO_FLOOR else ff, m)
                    c += found[1] / 1e3 if found is not None else _INF
                    v = min(window[k : k + m]) - c
                    if v < latest:
                        latest = v
                    k += m
            d = prefix_deadline[b - 1]
            f = prefix_floor[b - 1]
            limit = d if d < latest else latest
            found = pick(b, f, (min(limit, soft_d) - now) * 1e3) if soft_b else None
            members = hard_b + soft_b
            # the queue behind this batch keeps the worker busy after it: full batches, fastest
            rest_ms = fluid_ms = 0.0
            if price:
                full, part = divmod(queued - b, max_batch)
                rest_ms = full * fast[1] + (costs.fastest(None, part)[1] if part else 0.0)
                fluid_ms = (queued - b) / max_batch * fast[1]  # the rest's share of full batches
            if found is None and hard_b:
                found = pick(b, f, (limit - now) * 1e3)
                members = hard_b
            if found is not None:  # everyone in the batch on time (best-effort members count like the rest)
                sid, t = found
                acc = costs.accuracy(sid)
                value = members * acc
                if price:
                    value -= price * (costs.blocked_arrivals(t + rest_ms) + theta * (t + fluid_ms))
                    alt = costs.fastest(None if f == _NO_FLOOR else f, b) if theta else None
                    if alt is not None and alt[0] != sid:  # in saturation the fastest may be worth more;
                        # `sid` stays the top of the range `best_priced` searches for this batch size
                        cut = price * (costs.blocked_arrivals(alt[1] + rest_ms) + theta * (alt[1] + fluid_ms))
                        value = max(value, members * costs.accuracy(alt[0]) - cut)
                key = (1, value + (n_hard - hard_b) * acc_fast, b, acc, -t)
            elif not hard_b:  # only late best-effort members: the fastest subnet that keeps the rest on time
                found = costs.fastest(None if f == _NO_FLOOR else f, b)
                if found is not None and now + found[1] / 1e3 <= latest:
                    sid, t = found
                    acc = costs.accuracy(sid)
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
                acc = costs.accuracy(sid)
                key = (0, hard_b, b, acc if hard_b else -t, -t)
            if best is None or key > best:
                best, decision = key, (sid, b)
                priced = (b, f, sid, members, rest_ms) if key[0] == 1 and members else None
        if (best is None or best[0] == 0) and hasattr(costs, "plan_late"):
            exact = self._fewest_late(queue, now, costs, max_batch, hard, floors)
            if exact is not None:
                return exact
        if decision is not None and priced is not None and price > 0:
            # the batch's busy period turns away arrivals with tight budgets: a cheaper subnet
            # of the same batch wins when its accuracy loss is smaller than what they would lose
            decision = (costs.best_priced(*priced, price, theta)[0], priced[0])
        return Decision(*decision) if decision is not None else None

    @staticmethod
    def _fewest_late(queue: Sequence[Request], now: float, costs, max_batch: int, hard, floors) -> Decision | None:
        """When the quick look-ahead finds no batch that keeps every planned request on time
        (it assumes full batches; the engine's plan splits them where deadlines demand):
        try, per batch size, the most accurate subnet that makes the batch's deadline and
        the fastest one, plan the rest exactly (`plan_late`), and take the fewest late."""
        floored = max(floors) > _NO_FLOOR
        best: tuple | None = None
        decision = None
        d, f, hard_b = _INF, _NO_FLOOR, 0
        for b in range(1, min(len(queue), max_batch) + 1):
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
                late = len(costs.plan_late(hard[b:], floors[b:] if floored else None, end))
                late += hard_b if end > d else 0
                acc = costs.accuracy(sid)
                key = (-late, hard_b * acc, b, acc, -t)
                if best is None or key > best:
                    best, decision = key, Decision(sid, b)
        return decision

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


class StaticPolicy(Policy):
    """One fixed subnet; the largest batch every member's deadline allows."""

    def __init__(self, subnet: int):
        self.subnet = subnet
        self.name = f"static:{subnet}"

    def restrict(self, candidates: list[int]) -> list[int]:
        return [self.subnet]

    def choose(self, queue: Sequence[Request], now: float, costs: CostView, max_batch: int) -> Decision | None:
        size = 1
        if hasattr(costs, "queue_arrays"):
            hard, floors = costs.queue_arrays(queue)
            d, f = _INF, _NO_FLOOR
            for b in range(1, min(len(queue), max_batch) + 1):
                d = min(d, hard[b - 1])
                f = max(f, floors[b - 1])
                found = costs.fastest(None if f == _NO_FLOOR else f, b)
                if found is None or found[0] != self.subnet or now + found[1] / 1e3 > d:
                    break
                size = b
            return Decision(self.subnet, size)
        for p in prefixes(queue, now, costs, max_batch):
            if self.subnet not in costs.eligible(p.min_accuracy):
                break
            if now + costs.predict_ms(self.subnet, p.size) / 1e3 > p.deadline:
                break
            size = p.size
        return Decision(self.subnet, size)


class SlackFitPolicy(Policy):
    """SuperServe's SlackFit: the (subnet, batch) whose latency best fills the head's slack.

    Args:
        bucket_ratio: relative width of a latency bucket; latencies within a factor of
            1 + bucket_ratio of each other count as fitting the slack equally well.
    """

    name = "slackfit"

    def __init__(self, bucket_ratio: float = 0.1):
        if bucket_ratio <= 0:
            raise ValueError(f"bucket_ratio must be > 0, got {bucket_ratio}")
        self.bucket_ratio = bucket_ratio

    def bucket(self, ms: float) -> int:
        return math.floor(math.log(max(ms, 1e-6)) / math.log1p(self.bucket_ratio))

    def choose(self, queue: Sequence[Request], now: float, costs: CostView, max_batch: int) -> Decision | None:
        if hasattr(costs, "best_within"):
            return self._choose_on_fronts(queue, now, costs, max_batch)
        best: tuple | None = None
        decision = None
        for p in prefixes(queue, now, costs, max_batch):
            slack_ms = (p.deadline - now) * 1e3
            for s in costs.eligible(p.min_accuracy):
                t = costs.predict_ms(s, p.size)
                if t > slack_ms:
                    continue
                if p.hard:
                    key = (1, self.bucket(t), p.size, costs.accuracy(s), -t)
                else:  # only late best-effort requests: fastest, in as few batches as possible
                    key = (0, 0, p.size, -t, costs.accuracy(s))
                if best is None or key > best:
                    best, decision = key, Decision(s, p.size)
        return decision

    def _choose_on_fronts(self, queue: Sequence[Request], now: float, costs, max_batch: int) -> Decision | None:
        """On per-batch-size Pareto fronts the best-fitting subnet at batch b is the one with
        the largest latency within the slack (also the most accurate): one search per b."""
        hard, floors = costs.queue_arrays(queue)
        best: tuple | None = None
        decision = None
        d, f = _INF, _NO_FLOOR
        for b in range(1, min(len(queue), max_batch) + 1):
            d = min(d, hard[b - 1])
            f = max(f, floors[b - 1])
            if d < _INF:
                found = costs.best_within(b, f, (d - now) * 1e3)
                if found is None:
                    continue
                sid, t = found
                key = (1, self.bucket(t), b, costs.accuracy(sid), -t)
            else:  # only best-effort requests: fastest, in as few batches as possible
                found = costs.fastest(None if f == _NO_FLOOR else f, b)
                if found is None:
                    continue
                sid, t = found
                key = (0, 0, b, -t, costs.accuracy(sid))
            if best is None or key > best:
                best, decision = key, Decision(sid, b)
        return decision


def make_policy(spec: str | Policy) -> Policy:
    """A policy from its name: "elastic", "slackfit" or "static:<subnet id>"."""
    if isinstance(spec, Policy):
        return spec
    if spec == "elastic":
        return ElasticPolicy()
    if spec == "slackfit":
        return SlackFitPolicy()
    if isinstance(spec, str) and spec.startswith("static:"):
        try:
            return StaticPolicy(int(spec.split(":", 1)[1]))
        except ValueError:
            pass
    raise ConfigError(f"unknown policy {spec!r}; use 'elastic', 'slackfit' or 'static:<subnet id>'")
