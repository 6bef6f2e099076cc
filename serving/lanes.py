"""`LaneRouter`: which of a runtime's lanes a request is offered to, and in what order.

A lane is one engine — a worker thread, its scheduler and queue — over the runtime's one
set of weights. A forward cannot be interrupted, so on one lane a batch on a slow, accurate
subnet holds every request that arrives behind it; one with a tight budget is then refused
or served by the fastest subnet only. With two lanes on two cores, the requests whose
budgets are too short to wait behind such a batch go to a *fast lane*, and the others to a
lane where slow, accurate subnets can run without holding them up: a partition by latency
class, as Clipper (NSDI'17) and Clockwork (OSDI'20) keep separate queues per latency
objective (`elastic bench lanes` measures one lane against two).

The split is by budget: below `split_ms` the fast lane first, else the other lanes first;
each request is offered to the other class's lanes when its own refuse it, so no lane
refuses what another could serve. Within a class, the least loaded lane comes first. A
policy whose every forward costs the same (a static subnet) gains nothing from the split:
every lane is then one class, least loaded first.

The default split is four times the batch-1 service of the fastest candidate: a request
with less can wait for a few fast forwards, not for a slow one. The factor comes from an
experiment on the DeiT scenario (not part of the bench; docs/serving.md, "Lanes"), whose
budgets start at twice the fastest forward: there it splits at ~19 ms, in the 15-25 ms
range that did best, where a split at twice the most accurate candidate's forward (~89 ms)
sent most requests to the fast lane and kept little of the gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from elastic.errors import ConfigError


class LaneRouter:
    """The order in which a request is offered to the lanes.

    Args:
        lanes: how many lanes (>= 1).
        split_ms: budgets below it go to the fast lane (lane 0) first; None: no split
            (every lane one class, least loaded first).
    """

    def __init__(self, lanes: int, split_ms: float | None = None):
        if lanes < 1:
            raise ConfigError(f"lanes must be >= 1, got {lanes}")
        if split_ms is not None and not (split_ms > 0 and math.isfinite(split_ms)):
            raise ConfigError(f"lane split must be a finite number of ms > 0, got {split_ms!r}")
        self.lanes = lanes
        self.split_ms = split_ms if lanes > 1 else None

    def order(self, budget_ms: float, loads: Sequence[int]) -> list[int]:
        """Lane indices to offer a request with `budget_ms` to, best first.

        Args:
            loads: requests queued or running per lane (a snapshot; ties keep lane order).
        """
        if self.lanes == 1:
            return [0]
        by_load = sorted(range(self.lanes), key=loads.__getitem__)
        if self.split_ms is None:
            return by_load
        if budget_ms < self.split_ms:
            return [0, *(k for k in by_load if k != 0)]
        slow = [k for k in by_load if k != 0]
        return [*slow, 0]


def default_split_ms(fastest_service_ms: float) -> float:
    """The default split: four times the batch-1 service (ms) of the fastest candidate."""
    return 4.0 * fastest_service_ms
