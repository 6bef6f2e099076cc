"""What happened to each request of a load run, how it is judged correct, and the run's score.

Real runs (`bench/replay.py`) and simulated runs (`bench/simulate.py`) both produce one
`Outcome` per offered request, and `score` turns a list of them into the load suite's
numbers, so the two modes are measured by the same rule (and still reported apart).

The score is SuperServe's (NSDI'25): SLO attainment (answered within budget, over all
offered requests) and effective accuracy (correct *and* within budget, over all offered
requests); a rejected, shed, failed or late request counts as wrong. Besides: SLO
attainment among admitted requests, rejections at submit, sheds after admission (as a share
of admitted requests: the runtime's broken promises), latency quantiles of answered
requests and the batch sizes they ran in.

Correctness comes from a `Judge`:
- `LabelJudge`: the model's real prediction (argmax of its logits) against the true label;
- `BernoulliJudge`: a request served by subnet s counts correct with probability acc(s) —
  for models with random weights whose accuracy is taken from a published table, and for
  simulated runs that produce no logits. The uniform draw u_k of request k depends only on
  (seed, k), so every contender sees the same draws on the same seed (common random
  numbers): subnet s is right on request k iff u_k < acc(s).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

ANSWERED, REJECTED, SHED, FAILED = "answered", "rejected", "shed", "failed"


@dataclass(frozen=True)
class Outcome:
    """One offered request and what became of it."""

    status: str  # "answered" | "rejected" (at submit) | "shed" (after admission) | "failed"
    budget_ms: float  # its latency budget
    subnet: int | None = None  # the subnet that answered it
    latency_ms: float | None = None  # submit -> answer
    batch_size: int | None = None  # requests in the batch it ran in
    correct: bool = False  # the answer is right (judged; False unless answered)
    reason: str = ""  # why rejected / shed / failed

    @property
    def on_time(self) -> bool:
        return self.status == ANSWERED and self.latency_ms is not None and self.latency_ms <= self.budget_ms


class Judge(Protocol):
    """Decides whether request `k` (image `index`), answered by `subnet`, is correct."""

    def __call__(self, k: int, index: int, subnet: int, output: Any) -> bool: ...


class LabelJudge:
    """Real predictions: the argmax of the logits against the image's label.

    Shape:
        labels: (N,); output: (num_classes,) logits of one request
    """

    def __init__(self, labels: Sequence[int] | Any):
        self.labels = [int(v) for v in labels]

    def __call__(self, k: int, index: int, subnet: int, output: Any) -> bool:
        return int(output.argmax()) == self.labels[index]


class BernoulliJudge:
    """Correct with probability acc(subnet), drawn with common random numbers per (seed, k)."""

    def __init__(self, accuracy: Mapping[int, float], seed: int | str):
        self.accuracy = dict(accuracy)
        self.seed = seed

    def draw(self, k: int) -> float:
        """The uniform number of request k: the same for every contender on this seed."""
        return random.Random(f"{self.seed}/{k}").random()

    def __call__(self, k: int, index: int, subnet: int, output: Any = None) -> bool:
        return self.draw(k) < self.accuracy[subnet]


def score(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The load suite's numbers for one run.

    Returns:
        JSON-ready: requests, effective_accuracy, slo_attainment, admitted,
        admitted_slo_attainment (None when nothing was admitted), rejected, shed,
        shed_share (shed / admitted), failed, late, answered, latency_ms {p50, p99} of answered
        requests, mean_batch_size, per_subnet_counts, rejected_by_reason, shed_by_reason.
    """
    n = len(outcomes)
    counts = Counter(o.status for o in outcomes)
    answered = [o for o in outcomes if o.status == ANSWERED]
    on_time = [o for o in answered if o.on_time]
    admitted = n - counts[REJECTED]
    latencies = sorted(o.latency_ms for o in answered if o.latency_ms is not None)
    per_subnet = Counter(str(o.subnet) for o in answered)
    return {
        "requests": n,
        "effective_accuracy": sum(o.correct for o in on_time) / n if n else 0.0,
        "slo_attainment": len(on_time) / n if n else 0.0,
        "admitted": admitted,
        "admitted_slo_attainment": len(on_time) / admitted if admitted else None,
        "rejected": counts[REJECTED],
        "shed": counts[SHED],
        "shed_share": counts[SHED] / admitted if admitted else 0.0,
        "failed": counts[FAILED],
        "late": len(answered) - len(on_time),
        "answered": len(answered),
        "latency_ms": {
            "p50": statistics.median(latencies) if latencies else None,
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
        },
        "mean_batch_size": statistics.fmean(o.batch_size for o in answered) if answered else None,
        "per_subnet_counts": dict(sorted(per_subnet.items(), key=lambda kv: int(kv[0]))),
        "rejected_by_reason": dict(Counter(o.reason for o in outcomes if o.status == REJECTED)),
        "shed_by_reason": dict(Counter(o.reason for o in outcomes if o.status == SHED)),
    }
