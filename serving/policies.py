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
from typing import Protocol

from .request import Request


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
    """

    name = "elastic"

    def __init__(self, horizon: int | None = None):
        self.horizon = horizon

    def choose(self, queue: Sequence[Request], now: float, costs: CostView, max_batch: int) -> Decision | None:
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
    raise ValueError(f"unknown policy {spec!r}; use 'elastic', 'slackfit' or 'static:<subnet id>'")
