"""Ray Serve request routers: budget-aware (ours) and round-robin (the baseline it is measured against).

`BudgetAwareRouter` implements Ray Serve's custom `RequestRouter` interface
(`choose_replicas(candidate_replicas, pending_request) -> ranks of replicas`). For each
request it reads the budget the caller sent (`budget_ms`, `sent_at`, `min_accuracy`
keyword arguments of the handle call), each replica's published cost table
(`RunningReplica.routing_stats`, filled by the replica's `record_routing_stats`, see
stats.py) and the replica's live queue length (Ray's queue-length cache, probed with
`get_queue_len` when the cache has no fresh entry), and ranks the replicas: the most
accurate subnet predicted to make the budget first; among replicas that tie on accuracy,
the shorter queue; among those that tie on both, a random order. Not the earliest
predicted completion: replicas of one deployment differ there only by their own latency
estimates, and at light load, where every queue is empty, that tie-break sent one replica
66–90 % of the requests (083b901's `ray_load` run, 0.25×). Ray then sends the request to
the first replica in that order whose queue has room (`max_ongoing_requests`). Without a
budget (an HTTP request, whose body the router cannot see) or before every replica has
published a table, it falls back to power of two choices, Ray's default (Mitzenmacher,
"The Power of Two Choices in Randomized Load Balancing", 2001): two random replicas, the
less loaded wins.

No FIFO mixin: each routing decision is for the request it was computed for (Ray's base
router then hands the chosen replica to exactly that request), because a replica good for
one budget may be wrong for the next.

Imported only in the process that holds the handle (Ray instantiates the router there from
the `RequestRouterConfig` class path).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from .stats import Prediction, predict, usable

log = logging.getLogger(__name__)


def _power_of_two(candidates: list[RunningReplica]) -> list[list[RunningReplica]]:
    """One rank of (at most) two random replicas; Ray picks the one with the shorter queue."""
    if len(candidates) <= 2:
        return [random.sample(candidates, len(candidates))]
    return [random.sample(candidates, 2)]


class BudgetAwareRouter(RequestRouter):
    """Send each request to the replica where it meets its budget with the most accurate subnet.

    Options (`RequestRouterConfig(request_router_kwargs=...)`):
        hop_ms: expected cost of the hop to a replica and back, added to every prediction.
        probe_timeout_s: how long a queue-length probe may take when the cache has no entry.
    """

    def initialize_state(self, hop_ms: float = 2.0, probe_timeout_s: float = 0.05, **kwargs: Any) -> None:
        self.hop_ms = float(hop_ms)
        self.probe_timeout_s = float(probe_timeout_s)
        self.decisions = {"budget": 0, "fallback": 0}

    async def _probe(self, replica: RunningReplica) -> int:
        t = self.probe_timeout_s
        return await asyncio.wait_for(replica.get_queue_len(deadline_s=t), t)

    async def _queue_lens(self, replicas: list[RunningReplica]) -> dict[Any, int]:
        """Live queue length per replica: the cache, else a probe, else the published count."""
        cache = self.replica_queue_len_cache
        lens: dict[Any, int] = {}
        missing = []
        for r in replicas:
            q = cache.get(r.replica_id)
            if q is None:
                missing.append(r)
            else:
                lens[r.replica_id] = q
        if missing:
            probed = await asyncio.gather(*(self._probe(r) for r in missing), return_exceptions=True)
            for r, q in zip(missing, probed, strict=True):
                if isinstance(q, int):
                    cache.update(r.replica_id, q)
                    lens[r.replica_id] = q
                else:  # probe failed or timed out: the count the replica last published
                    lens[r.replica_id] = int(r.routing_stats.get("queued", 0))
        return lens

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        kwargs = pending_request.kwargs if pending_request is not None else {}
        budget = kwargs.get("budget_ms")
        if not isinstance(budget, (int, float)) or not all(usable(r.routing_stats) for r in candidate_replicas):
            self.decisions["fallback"] += 1
            return _power_of_two(candidate_replicas)
        sent_at = kwargs.get("sent_at", pending_request.created_at)
        elapsed_ms = max(0.0, (time.time() - float(sent_at)) * 1e3)
        floor = kwargs.get("min_accuracy")
        lens = await self._queue_lens(candidate_replicas)
        ranked: list[tuple[tuple[float, float], float, RunningReplica]] = []
        for r in candidate_replicas:
            p: Prediction = predict(
                r.routing_stats,
                lens[r.replica_id],
                float(budget),
                elapsed_ms=elapsed_ms,
                hop_ms=self.hop_ms,
                min_accuracy=floor if isinstance(floor, (int, float)) else None,
            )
            # most accurate first; among equals the shorter live queue, then at random: the
            # earlier predicted completion would pick, whenever queues tie (empty ones at light
            # load), the replica whose own latency estimate is lowest (module docstring)
            ranked.append(((-p.accuracy, lens[r.replica_id]), random.random(), r))
        ranked.sort(key=lambda item: (item[0], item[1]))
        self.decisions["budget"] += 1
        return [[r] for _, _, r in ranked]


class RoundRobinRouter(RequestRouter):
    """The replicas in turn, whatever their load or the request's budget (the baseline)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._turn = itertools.count()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        i = next(self._turn) % len(ordered)
        # the turn's replica first; the others only if its queue is full
        return [[ordered[i]], ordered[i + 1 :] + ordered[:i]]
