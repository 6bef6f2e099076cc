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
binary search per batch size instead of a loop over subnets (`OnFronts`,
serving/fronts_decision.py), and the look-ahead is a hard constraint rather than a score:
for every batch size b it computes the latest end of the batch that keeps every planned
request behind it on time (those requests served in full batches on the fastest eligible
subnet, in order), and takes the most accurate subnet that ends by then and by the batch's
own deadline; among batch sizes, the most accuracy delivered (rest counted at the fastest
subnet's accuracy). A request is so moved to a cheaper subnet exactly when the more
accurate one would make an admitted request miss. When the quick look-ahead finds no choice
that keeps everyone on time, it plans the rest exactly (the engine's plan splits batches
where deadlines demand); when no choice does (a prediction went wrong), the whole head runs
on the fastest subnet: the worker's best rate, as a static policy serves.

What a request left for a later batch is worth: the look-ahead counts the rest at the
fastest subnet's accuracy, a lower bound that left a loose-budget request indifferent
between riding in a tight request's batch on the fastest subnet and waiting for a batch of
its own on an accurate one — and ties went to the larger batch, so loose requests rode
along on the fastest subnet. A request the batch leaves behind is credited with what it can
still get later when that beats the batch's subnet (`OnFronts.later_accuracies`): the most
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

from elastic.errors import ConfigError

from .decision import CostView, Decision, Policy, prefixes
from .fronts_decision import OnFronts
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
            return OnFronts(self, queue, now, costs, max_batch, fast).choose() if fast is not None else None
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
