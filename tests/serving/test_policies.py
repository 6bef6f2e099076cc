"""The static and SlackFit policies, and policy parsing, on the synthetic cost table."""

import pytest
from test_scheduler import Clock, make  # sibling test module

from elastic.errors import BudgetInfeasible, Overloaded
from elastic.serving import Decision, ElasticPolicy, SlackFitPolicy, StaticPolicy, make_policy


def fill(s, c, budgets, now=0.0):
    for b in budgets:
        s.add_request(c.request(b, at=now), now)


def test_make_policy_parses_names():
    assert isinstance(make_policy("elastic"), ElasticPolicy)
    assert isinstance(make_policy("slackfit"), SlackFitPolicy)
    static = make_policy("static:2")
    assert isinstance(static, StaticPolicy) and static.subnet == 2 and static.name == "static:2"
    for bad in ("static:", "static:x", "fastest", ""):
        with pytest.raises(ValueError):
            make_policy(bad)


def test_static_uses_its_subnet_only_and_batches_as_far_as_deadlines_allow():
    s, c = make("static:1"), Clock()
    assert s.candidates == [1]
    fill(s, c, [12] * 4 + [100] * 4)  # subnet 1: 5, 7, 9 (interpolated), 11, 13 ms at batch 1, 2, 3, 4, 5
    with pytest.raises(Overloaded, match="queue ahead"):
        fill(s, c, [12])  # a fifth 12 ms request: 13 ms in one batch, 11 + 5 ms in two
    batch = s.schedule(0.0).batch
    assert (batch.subnet, batch.size) == (1, 4)


def test_static_rejects_what_its_subnet_cannot_serve_even_if_another_could():
    s, c = make("static:2"), Clock()
    with pytest.raises(BudgetInfeasible):
        s.add_request(c.request(8), 0.0)  # subnet 2 needs 10 ms; subnet 1 would have made it


def test_static_subnet_need_not_be_on_the_pareto_front():
    s, c = make("static:3"), Clock()
    fill(s, c, [100])
    assert s.schedule(0.0).batch.subnet == 3


def test_static_unknown_subnet_is_an_error():
    with pytest.raises(ValueError, match="lacks"):
        make("static:9")


@pytest.mark.parametrize(("budget", "expected"), [(3, 0), (8, 1), (12, 2)])
def test_slackfit_fills_the_slack_of_a_lone_request(budget, expected):
    s, c = make("slackfit"), Clock()
    fill(s, c, [budget])
    assert s.schedule(0.0).batch.subnet == expected


def test_slackfit_prefers_the_largest_batch_inside_the_best_fitting_bucket():
    # eight requests with 10 ms of slack: subnet 2 alone takes 10 ms, subnet 0 on all eight 9 ms
    narrow, c = make(SlackFitPolicy(bucket_ratio=0.1)), Clock()
    fill(narrow, c, [10] * 8)
    batch = narrow.schedule(0.0).batch
    assert (batch.subnet, batch.size) == (2, 1)  # 10 ms fits the slack best; 9 ms is a bucket lower

    wide, c = make(SlackFitPolicy(bucket_ratio=0.2)), Clock()
    fill(wide, c, [10] * 8)
    batch = wide.schedule(0.0).batch
    assert (batch.subnet, batch.size) == (0, 8)  # same bucket: the bigger batch wins


def test_slackfit_moves_to_faster_subnets_as_slack_shrinks():
    chosen = []
    for slack in (40, 20, 9):
        s, c = make("slackfit"), Clock()
        fill(s, c, [slack] * 8)
        batch = s.schedule(0.0).batch
        chosen.append((batch.subnet, batch.size))
    assert chosen == [(2, 8), (1, 8), (0, 8)]


def test_slackfit_serves_late_best_effort_requests_fast_and_together():
    s, c = make("slackfit"), Clock()
    fill(s, c, [1000] * 4)
    for _ in range(4):
        s.add_request(c.request(1.0, best_effort=True), 0.0)
    batch = s.schedule(0.0).batch  # the four late ones come first (earliest deadlines)
    assert batch.size == 8 and batch.subnet == 2  # with the on-time ones: slack is theirs

    s, c = make("slackfit"), Clock()
    for _ in range(4):
        s.add_request(c.request(1.0, best_effort=True), 0.0)
    batch = s.schedule(0.0).batch
    assert (batch.subnet, batch.size) == (0, 4)


def test_policies_are_plain_objects_returning_decisions():
    s, c = make(), Clock()
    fill(s, c, [12])
    d = ElasticPolicy().choose(s.waiting(), 0.0, s, 8)
    assert d == Decision(2, 1)


def test_elastic_look_ahead_matches_a_step_by_step_simulation():
    import random

    from elastic.serving import Request

    rng = random.Random(3)
    s, _ = make(), Clock()
    for trial in range(200):
        rest = [
            Request(i, 0.0, rng.choice([3, 8, 15, 30, 60]), min_accuracy=rng.choice([None, None, 0.65]))
            for i in range(rng.randint(0, 20))
        ]
        rest.sort(key=lambda r: r.order_key())
        end = rng.uniform(0, 0.03)
        expected, t = 0.0, end  # serve in full batches on the fastest eligible subnet, in order
        for i in range(0, len(rest), 8):
            chunk = rest[i : i + 8]
            floors = [r.min_accuracy for r in chunk if r.min_accuracy is not None]
            sid, ms = s.fastest(max(floors) if floors else None, len(chunk))
            t += ms / 1e3
            expected += s.accuracy(sid) * sum(t <= r.deadline for r in chunk)
        assert ElasticPolicy.rest_curve(rest, s, 8)(end) == pytest.approx(expected), trial


def _tight_then_loose(later_utilisation, gap_s):
    """A tight request (only the fast subnet makes it) and a loose one queued together after
    earlier traffic at one arrival per `gap_s`: the two batches served, as (subnet, size)."""
    s, c = make(ElasticPolicy(later_utilisation=later_utilisation)), Clock()
    t = 0.0
    for _ in range(8):  # the arrival rate the credit checks the worker's capacity against
        s.demand.record(t, 100.0)
        t += gap_s
    s.add_request(c.request(3.5, at=t), now=t)
    s.add_request(c.request(500.0, at=t), now=t)
    first = s.schedule(t, hold=False).batch
    end = t + first.predicted_ms / 1e3
    s.update_from_output(first, first.predicted_ms, end)
    second = s.schedule(end, hold=False).batch
    return [(b.subnet, b.size) for b in (first, second) if b is not None]


def test_a_loose_request_waits_for_an_accurate_batch_instead_of_riding_along_on_the_fastest():
    # valued at the fastest subnet's accuracy once left behind, the loose request rode along
    assert _tight_then_loose(0.0, gap_s=0.05) == [(0, 2)]
    # credited with the slow subnet it can still get, it waits: the tight one alone, then it
    assert _tight_then_loose(0.6, gap_s=0.05) == [(0, 1), (2, 1)]
    # arrivals every 0.5 ms: not even full batches of the fastest keep up, waiting buys nothing
    assert _tight_then_loose(0.6, gap_s=0.0005) == [(0, 2)]
