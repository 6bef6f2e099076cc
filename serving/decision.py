"""What a scheduling policy sees and returns: the `Decision`, the `CostView` it may query,
the `prefixes` of the queue it may batch, and the `Policy` base class.

The policies themselves are in `serving/policies.py` (static, SlackFit) and
`serving/elastic_policy.py` (the default).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
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
