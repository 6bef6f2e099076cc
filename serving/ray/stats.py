"""What a replica publishes for budget-aware routing, and the router's prediction from it.

Pure Python (no ray, no torch), so it is tested without a cluster. A replica's
`record_routing_stats` (deployment.py) calls `replica_stats` over its `BudgetScheduler`; the
router (router.py) calls `predict` with those stats and the replica's live queue length
(Ray's queue-length cache or a probe) for each candidate replica, and sends the request
where it meets its budget with the most accurate subnet, ties to the shorter queue (then
at random, router.py says why). This is INFaaS's variant selection (Romero et al.,
ATC'21) lifted one level up, to replica selection, with Clockwork's (OSDI'20) idea that a
controller plans from per-worker latency predictions rather than from queue lengths alone.

The prediction is the replica's own latency model, simplified: the requests ahead of it
(`queue_len`, counting the batch running) drain at the per-request cost of full batches on
the most accurate candidate (`drain_ms`: what the elastic policy runs while slack allows),
then the new request runs at batch 1 on the subnet in question. A first version drained
the queue in full batches on the *fastest* candidate, which let a replica look able to serve
the top subnet behind almost any queue; charging the queue at the accurate subnet's rate
makes a longer queue cost predicted accuracy sooner. (It did not by itself stop requests
herding onto one replica: that came from the router's tie-break, see router.py.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

STATS_VERSION = 2


def replica_stats(scheduler: Any, queued: int, *, replica: str = "", metrics_port: int | None = None) -> dict:
    """The routing stats of one replica, from its scheduler's public cost view.

    Args:
        scheduler: the replica runtime's `BudgetScheduler` (None before a profile: empty stats).
        queued: requests the replica's engine holds now (queued + running).
        replica: the replica's tag (for logs and metrics).
        metrics_port: the port of the replica's Prometheus endpoint on 127.0.0.1.

    Returns:
        a JSON-able dict: `subnets` (candidate ids), `accuracy` (per candidate; FLOPs share
        when no accuracy is known, `accuracy_known` False), `service_ms` (per candidate, per
        batch size 1..B), `fastest_ms` (index b: fastest service at batch b, [0] = 0),
        `max_batch_size`, `queued`, `backlog_ms` (predicted drain of `queued`), `replica`,
        `metrics_port`.
    """
    if scheduler is None:
        return {"v": STATS_VERSION, "replica": replica, "metrics_port": metrics_port}
    B = scheduler.max_batch_size
    subnets = list(scheduler.candidates)
    service = [[round(scheduler.predict_ms(s, b), 4) for b in range(1, B + 1)] for s in subnets]
    fastest = [0.0] + [min(row[b - 1] for row in service) for b in range(1, B + 1)]
    top = max(range(len(subnets)), key=lambda i: scheduler.accuracy(subnets[i]))
    stats = {
        "v": STATS_VERSION,
        "subnets": subnets,
        "accuracy": [float(scheduler.accuracy(s)) for s in subnets],
        "accuracy_known": bool(scheduler.accuracy_known),
        "service_ms": service,
        "fastest_ms": fastest,
        "drain_ms_per_request": service[top][B - 1] / B,
        "max_batch_size": B,
        "queued": int(queued),
        "replica": replica,
        "metrics_port": metrics_port,
    }
    stats["backlog_ms"] = drain_ms(stats, queued)
    return stats


def usable(stats: dict | None) -> bool:
    """Whether `stats` carry a cost table (a replica that has not profiled yet has none)."""
    return bool(stats) and stats.get("v") == STATS_VERSION and bool(stats.get("subnets"))


def drain_ms(stats: dict, queue_len: int) -> float:
    """Predicted time for `queue_len` requests ahead to finish: each at the per-request cost
    of a full batch on the most accurate candidate."""
    return max(0, int(queue_len)) * stats["drain_ms_per_request"]


@dataclass(frozen=True)
class Prediction:
    """The router's forecast for one request on one replica."""

    subnet: int | None  # the most accurate subnet predicted to make the budget; None: none does
    accuracy: float  # its accuracy (-inf when none makes it)
    completion_ms: float  # predicted completion from the request's submit, on that subnet (else the fastest)

    def rank_key(self) -> tuple[float, float]:
        """Sort key: most accurate first, then earliest completion."""
        return (-self.accuracy, self.completion_ms)


def predict(
    stats: dict,
    queue_len: int,
    budget_ms: float,
    *,
    elapsed_ms: float = 0.0,
    hop_ms: float = 0.0,
    min_accuracy: float | None = None,
) -> Prediction:
    """Where on this replica a new request would land: the most accurate candidate meeting
    `min_accuracy` whose predicted completion (time already spent + hop + drain of the
    queue ahead + its own batch-1 service) is within `budget_ms`.

    Args:
        stats: the replica's `replica_stats` (must be `usable`).
        queue_len: requests at the replica now (Ray's live count: queued + running).
        budget_ms: the request's budget from its submit (math.inf: none).
        elapsed_ms: time since the submit, already spent (routing, backoff).
        hop_ms: expected cost of the hop to the replica and back.
        min_accuracy: the request's accuracy floor (None: any subnet).
    """
    start = elapsed_ms + hop_ms + drain_ms(stats, queue_len)
    known = stats.get("accuracy_known", False)
    best: Prediction | None = None
    fastest_done = math.inf
    for sid, acc, row in zip(stats["subnets"], stats["accuracy"], stats["service_ms"], strict=True):
        done = start + row[0]
        fastest_done = min(fastest_done, done)
        if min_accuracy is not None and (not known or acc < min_accuracy):
            continue
        if done <= budget_ms and (best is None or (acc, -done) > (best.accuracy, -best.completion_ms)):
            best = Prediction(sid, acc, done)
    return best if best is not None else Prediction(None, -math.inf, fastest_done)
