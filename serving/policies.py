"""Scheduling policies: which subnet, on how many of the most urgent requests.

Every policy sees the queue in scheduling order (priority level, then earliest deadline
first) and returns a `Decision`: a subnet and a batch size `b`, meaning "run the first `b`
queued requests". Because the queue is in deadline order, the batch's binding deadline is
that of its most urgent member that can still make it; best-effort requests already past
hope ride along without constraining the batch. Policies are pure Python over a `CostView`
(predicted latency and accuracy per subnet), so they can be tested on synthetic tables.

- `ElasticPolicy` ("elastic", default; `serving/elastic_policy.py`): the most accuracy
  delivered within deadlines, with a look-ahead over the backlog and a price on busy periods.
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

import math
from collections.abc import Sequence

from elastic.errors import ConfigError

from .decision import CostView, Decision, Policy, prefixes
from .elastic_policy import ElasticPolicy
from .request import Request

__all__ = ["CostView", "Decision", "ElasticPolicy", "Policy", "SlackFitPolicy", "StaticPolicy", "make_policy"]

_INF = math.inf
_NO_FLOOR = -math.inf


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
