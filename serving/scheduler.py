"""`BudgetScheduler`: admission, deadline-ordered queue, load shedding, online correction.

The control loop of an SLO-aware model server — Clockwork (Gujarati et al., OSDI'20),
INFaaS (Romero et al., ATC'21), SuperServe (Khare et al., NSDI'25) — over one elastic
model whose subnets are the "model variants":

- admission: a request no eligible subnet can finish in time is rejected at once
  (`BudgetInfeasible`), unless the caller asked for best effort; a full queue rejects
  (`Overloaded`), or evicts a queued request of lower priority, which is shed;
- queue: priority level, then earliest deadline first (EDF);
- step: shed queued requests that can no longer make their deadline (never silently: each
  one comes back as a `ShedRequest`), then let the policy pick (subnet, batch);
- feedback: every batch's observed latency corrects the predictions (`LatencyPredictor`).

Pure Python, no torch, single-threaded: the runtime serialises calls, and the clock is an
argument, so tests drive time by hand. Only subnets on the accuracy/latency Pareto front of
the profile are candidates. When the model carries no accuracies at all, the scheduler
plans with FLOPs as a stand-in (more FLOPs taken as more accurate, the SN-Net premise) and
says so in the log; `min_accuracy` can then not be met by any subnet.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence

from elastic.errors import BudgetInfeasible, Overloaded
from elastic.subnet import Subnet

from .interface import SchedulerInterface
from .output import ScheduledBatch, SchedulerOutput, ShedRequest
from .policies import Decision, Policy, make_policy
from .predictor import LatencyPredictor
from .profile import LatencyProfile
from .request import Request

log = logging.getLogger(__name__)


class BudgetScheduler(SchedulerInterface):
    """Deadline-aware batching over the subnets of one elastic model.

    Args:
        subnets: the model's subnet table (accuracies included when known).
        profile: measured latencies on the serving device.
        policy: "elastic" (default), "slackfit", "static:<id>", or a `Policy`.
        max_batch_size: most requests per forward.
        max_queue: most requests waiting (not counting the batch running).
        quantile: which profiled quantile to plan with, "p99" (default) or "p50".
        ewma_alpha: weight of a new observation in the online latency correction.
    """

    def __init__(
        self,
        subnets: Sequence[Subnet],
        profile: LatencyProfile,
        policy: str | Policy = "elastic",
        max_batch_size: int = 8,
        max_queue: int = 256,
        quantile: str = "p99",
        ewma_alpha: float = 0.2,
    ):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size}, {max_queue}")
        self.policy = make_policy(policy)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.quantile = quantile
        self.ewma_alpha = ewma_alpha
        self._subnets = list(subnets)
        self._queue: list[tuple[tuple[int, float, int], Request]] = []  # sorted by Request.order_key
        self._busy_until: float | None = None  # predicted end of the batch running
        self._eligible_cache: dict[float | None, list[int]] = {}
        self._fastest_cache: dict[tuple[float | None, int], tuple[int, float] | None] = {}
        self.set_profile(profile)

    # ---- cost table --------------------------------------------------------------------
    def set_profile(self, profile: LatencyProfile, subnets: Sequence[Subnet] | None = None) -> None:
        """Install a (new) profile, and optionally a new subnet table (fresh accuracies):
        recompute the candidates and reset the online correction."""
        if subnets is not None:
            self._subnets = list(subnets)
        known = {s.id: s.accuracy for s in self._subnets if s.accuracy is not None}
        if known:
            self._value = dict(known)
            self.accuracy_known = True
        else:
            top = max((s.flops for s in self._subnets), default=1) or 1
            self._value = {s.id: s.flops / top for s in self._subnets}
            self.accuracy_known = False
            log.warning("no subnet has a measured accuracy: planning with FLOPs as a stand-in")
        self._real_accuracy = known
        front = profile.candidates(self._subnets, value=self._value)
        self.candidates = self.policy.restrict(front)
        missing = [sid for sid in self.candidates if sid not in profile.p50_ms]
        if missing or not self.candidates:
            raise ValueError(f"policy {self.policy.name} needs subnets {missing or '(any)'} the profile lacks")
        for sid in self.candidates:
            self._value.setdefault(sid, 0.0)
        self.profile = profile
        self.predictor = LatencyPredictor(profile, self.quantile, self.ewma_alpha)
        self._eligible_cache.clear()
        self._fastest_cache.clear()
        log.info("scheduler %s: candidates %s", self.policy.name, self.candidates)

    # the CostView protocol the policies read
    def predict_ms(self, subnet: int, batch: int) -> float:
        return self.predictor.predict_ms(subnet, batch)

    def accuracy(self, subnet: int) -> float:
        return self._value[subnet]

    def real_accuracy(self, subnet: int) -> float | None:
        """The measured accuracy of `subnet`, None when unknown (no FLOPs stand-in)."""
        return self._real_accuracy.get(subnet)

    def eligible(self, min_accuracy: float | None) -> list[int]:
        if min_accuracy not in self._eligible_cache:
            if min_accuracy is None:
                ids = list(self.candidates)
            else:
                ids = [
                    s
                    for s in self.candidates
                    if (acc := self._real_accuracy.get(s)) is not None and acc >= min_accuracy
                ]
            self._eligible_cache[min_accuracy] = ids
        return self._eligible_cache[min_accuracy]

    def fastest(self, min_accuracy: float | None, batch: int = 1) -> tuple[int, float] | None:
        key = (min_accuracy, batch)
        if key not in self._fastest_cache:  # cleared whenever predictions change
            options = [(s, self.predict_ms(s, batch)) for s in self.eligible(min_accuracy)]
            self._fastest_cache[key] = min(options, key=lambda o: o[1]) if options else None
        return self._fastest_cache[key]

    def fastest_ms(self, request: Request) -> float:
        found = self.fastest(request.min_accuracy, 1)
        return found[1] if found is not None else math.inf

    # ---- SchedulerInterface ------------------------------------------------------------
    def add_request(self, request: Request, now: float) -> list[ShedRequest]:
        budget = request.budget_ms
        if not budget > 0:  # also catches NaN
            raise BudgetInfeasible(f"budget must be > 0 ms, got {budget}")
        if not self.eligible(request.min_accuracy):
            known = [self._real_accuracy[s] for s in self.candidates if s in self._real_accuracy]
            best = f"the best candidate reaches {max(known):.4f}" if known else "no candidate has a measured accuracy"
            raise BudgetInfeasible(f"no subnet meets min_accuracy={request.min_accuracy}: {best}")
        fastest = self.fastest_ms(request)
        wait_ms = max(0.0, (self._busy_until - now) * 1e3) if self._busy_until is not None else 0.0
        if not request.best_effort and now + (wait_ms + fastest) / 1e3 > request.deadline:
            raise BudgetInfeasible(
                f"budget {budget:.3g} ms < {fastest:.3g} ms predicted for the fastest subnet"
                + (f" + {wait_ms:.3g} ms until the running batch ends" if wait_ms else "")
            )
        evicted: list[ShedRequest] = []
        if len(self._queue) >= self.max_queue:
            victim = self._eviction_victim()
            if victim is None or victim.priority >= request.priority:
                raise Overloaded(f"queue full ({self.max_queue} requests waiting)")
            self._remove(victim)
            evicted.append(
                ShedRequest(
                    victim.id,
                    "evicted",
                    f"evicted from a full queue by a priority-{request.priority} request",
                )
            )
        key = request.order_key()
        bisect.insort(self._queue, (key, request))  # keys are unique: they end in the request id
        return evicted

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        kept = []
        for key, r in self._queue:
            if not r.best_effort and now + self.fastest_ms(r) / 1e3 > r.deadline:
                waited = (now - r.arrival) * 1e3
                out.shed.append(
                    ShedRequest(
                        r.id,
                        "deadline",
                        f"budget {r.budget_ms:.3g} ms can no longer be met after {waited:.3g} ms in the queue",
                    )
                )
            else:
                kept.append((key, r))
        self._queue = kept
        if not kept:
            return out
        queue = [r for _, r in kept]
        decision = self.policy.choose(queue, now, self, self.max_batch_size)
        if decision is None or not 1 <= decision.size <= min(len(queue), self.max_batch_size):
            decision = Decision(self.fastest(queue[0].min_accuracy, 1)[0], 1)
        members = queue[: decision.size]
        del self._queue[: decision.size]
        predicted = self.predict_ms(decision.subnet, decision.size)
        self._busy_until = now + predicted / 1e3
        out.batch = ScheduledBatch(decision.subnet, tuple(r.id for r in members), predicted, now, self.policy.name)
        return out

    def update_from_output(self, batch: ScheduledBatch, exec_ms: float | None) -> float | None:
        self._busy_until = None
        if exec_ms is None:
            return None
        self.predictor.observe(batch.subnet, batch.size, exec_ms)
        self._fastest_cache.clear()
        return exec_ms / batch.predicted_ms if batch.predicted_ms > 0 else None

    def abort_all(self, reason: str = "closed") -> list[ShedRequest]:
        shed = [ShedRequest(r.id, reason, "the runtime closed without draining its queue") for _, r in self._queue]
        self._queue.clear()
        return shed

    def get_num_waiting(self) -> int:
        return len(self._queue)

    # ---- helpers -----------------------------------------------------------------------
    def waiting(self) -> list[Request]:
        """The queue in scheduling order (a copy)."""
        return [r for _, r in self._queue]

    def _eviction_victim(self) -> Request | None:
        """Lowest priority, latest deadline, latest arrival: the cheapest request to shed."""
        if not self._queue:
            return None
        return max((r for _, r in self._queue), key=lambda r: (-r.priority, r.deadline, r.id))

    def _remove(self, request: Request) -> None:
        self._queue = [(k, r) for k, r in self._queue if r.id != request.id]
