"""Scoring a load run from per-request outcomes, and the two ways of judging correctness."""

import pytest
import torch

from elastic.bench.outcomes import ANSWERED, FAILED, REJECTED, SHED, BernoulliJudge, LabelJudge, Outcome, score
from elastic.bench.replay import shed_reason
from elastic.errors import Overloaded
from elastic.serving.output import ShedRequest


def test_score_by_hand():
    outcomes = [
        Outcome(ANSWERED, 10.0, subnet=2, latency_ms=5.0, batch_size=4, correct=True),  # on time, right
        Outcome(ANSWERED, 10.0, subnet=2, latency_ms=9.0, batch_size=4, correct=False),  # on time, wrong
        Outcome(ANSWERED, 10.0, subnet=1, latency_ms=12.0, batch_size=2, correct=True),  # late
        Outcome(REJECTED, 10.0, reason="infeasible"),
        Outcome(SHED, 10.0, reason="deadline"),
        Outcome(FAILED, 10.0, reason="ExecutionError"),
    ]
    s = score(outcomes)
    assert s["requests"] == 6 and s["answered"] == 3 and s["late"] == 1
    assert s["effective_accuracy"] == pytest.approx(1 / 6)
    assert s["slo_attainment"] == pytest.approx(2 / 6)
    assert s["admitted"] == 5 and s["admitted_slo_attainment"] == pytest.approx(2 / 5)
    assert s["rejected"] == 1 and s["shed"] == 1 and s["failed"] == 1
    assert s["shed_share"] == pytest.approx(1 / 5)
    assert s["latency_ms"] == {"p50": 9.0, "p99": 12.0}
    assert s["mean_batch_size"] == pytest.approx(10 / 3)
    assert s["per_subnet_counts"] == {"1": 1, "2": 2}
    assert s["rejected_by_reason"] == {"infeasible": 1} and s["shed_by_reason"] == {"deadline": 1}


def test_score_of_nothing_admitted():
    s = score([Outcome(REJECTED, 1.0, reason="overloaded")] * 3)
    assert s["effective_accuracy"] == 0.0 and s["admitted"] == 0 and s["admitted_slo_attainment"] is None
    assert s["latency_ms"] == {"p50": None, "p99": None} and s["shed_share"] == 0.0


def test_label_judge_reads_the_argmax():
    judge = LabelJudge(torch.tensor([3, 1]))
    assert judge(0, 0, 5, torch.tensor([0.0, 0.0, 0.0, 9.0]))
    assert not judge(7, 1, 5, torch.tensor([0.0, 0.0, 0.0, 9.0]))


def test_bernoulli_judge_hits_the_accuracy_with_common_draws():
    judge = BernoulliJudge({0: 0.3, 1: 0.8}, seed=5)
    n = 20000
    weak = [judge(k, k, 0) for k in range(n)]
    strong = [judge(k, k, 1) for k in range(n)]
    assert sum(weak) / n == pytest.approx(0.3, abs=0.015)
    assert sum(strong) / n == pytest.approx(0.8, abs=0.015)
    # the same draw per request: whatever the weaker subnet gets right, the stronger one does too
    assert all(s for w, s in zip(weak, strong, strict=True) if w)
    # same seed, same draws (another contender); another seed, other draws
    assert [BernoulliJudge({0: 0.3}, 5)(k, 0, 0) for k in range(200)] == weak[:200]
    assert [BernoulliJudge({0: 0.3}, 6)(k, 0, 0) for k in range(200)] != weak[:200]


def test_real_runs_keep_the_runtimes_shed_reason():
    # the load suite's real runs read the reason from the runtime's `Overloaded` text; a
    # missed deadline's detail never says "deadline", so it has to come from the reason
    for reason in ("deadline", "evicted", "closed", "timeout", "error"):
        shed = ShedRequest(7, reason, "budget 3 ms can no longer be met after 5 ms queued")
        assert shed_reason(Overloaded(shed.message())) == reason
    assert ShedRequest(7, "closed").message() == "request 7 shed (closed)"
    assert shed_reason(Overloaded("the runtime is closed")) == "shed"
