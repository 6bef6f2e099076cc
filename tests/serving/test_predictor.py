"""The online latency correction (`LatencyPredictor`): one machine factor, moved by every
observation, scales every subnet's profile."""

import random

import pytest

from elastic.serving import LatencyProfile
from elastic.serving.predictor import LatencyPredictor


def _profile(ms: dict[int, float]) -> LatencyProfile:
    return LatencyProfile.from_table({s: {1: v, 2: 1.8 * v} for s, v in ms.items()}, device="cpu")


def test_a_machine_that_slows_down_slows_every_subnet_even_those_not_run():
    p = LatencyPredictor(_profile({0: 1.0, 1: 2.0, 2: 4.0}), "p50")
    for _ in range(40):
        p.observe(0, 1, 2.0)  # twice the profile
    assert p.predict_ms(0, 1) == pytest.approx(2.0, rel=0.01)
    assert p.predict_ms(1, 1) == pytest.approx(4.0, rel=0.01)  # never run: the machine's level
    assert p.predict_ms(2, 2) == pytest.approx(2 * 7.2, rel=0.01)
    assert p.correction(0) == p.correction(2) == p.shared


def test_a_slow_spell_that_only_one_subnet_saw_does_not_reorder_them():
    # the machine alternates between busy spells (2.5x the profile) and quiet ones (1.2x),
    # and, as under a load-following policy, the faster subnet runs in the busy spells, the
    # slower one in the quiet ones: per-subnet averages would rank the faster one as 2x
    # slower (each remembers the spell it ran in). Here both follow the machine and keep
    # the profile's order, and by the end of each spell both are at the machine's level.
    rng = random.Random(0)
    p = LatencyPredictor(_profile({0: 1.0, 1: 1.05}), "p50")
    for _ in range(40):
        for s, level in ((0, 2.5), (1, 1.2)):
            for _ in range(30):
                p.observe(s, 1, level * (1.0, 1.05)[s] * rng.uniform(0.95, 1.05))
                assert p.predict_ms(0, 1) < p.predict_ms(1, 1)
            assert p.predict_ms(0, 1) == pytest.approx(level * 1.0, rel=0.06)
            assert p.predict_ms(1, 1) == pytest.approx(level * 1.05, rel=0.06)


def test_a_subnet_off_its_profile_widens_the_measured_tail():
    # subnet 1 runs 1.5x its profile, subnet 0 as profiled: the machine factor settles
    # between, and the planning tail (95th percentile of observed / expected) covers the
    # slower one, so planning with it does not make subnet 1's batches late
    p = LatencyPredictor(_profile({0: 1.0, 1: 2.0}), "p99")
    for _ in range(200):
        p.observe(0, 1, 1.0)
        p.observe(1, 1, 3.0)
    assert p.shared == pytest.approx(1.25, abs=0.06)  # the two ratios, 1.0 and 1.5, averaged
    assert p.predict_ms(1, 1) >= 3.0  # the tail covers the slower subnet


def test_the_fronts_answer_with_the_corrected_predictions():
    # the scheduler keeps uncorrected latencies in its fronts and scales them at each query:
    # `best_within` must give what a search over every candidate's `predict_ms` gives, as
    # the machine factor and the measured tail move
    from elastic.bench.scheduler import synthetic
    from elastic.serving import BudgetScheduler

    subnets, profile = synthetic(30)
    s = BudgetScheduler(subnets, profile, "elastic", max_batch_size=8)
    rng = random.Random(0)
    for k in range(300):
        sid, b = rng.choice(s.candidates), rng.randint(1, 8)
        s.latency.forward.observe(sid, b, profile.latency_ms(sid, b, "p50") * rng.uniform(0.5, 3.0))
        s.observe_overhead(b, rng.uniform(0.0, 0.5))
        s._refresh_fronts()
        for _ in range(5):
            b, floor, max_ms = rng.randint(1, 8), rng.choice([-float("inf"), 0.7]), rng.uniform(0.0, 60.0)
            within = [c for c in s.candidates if s.predict_ms(c, b) <= max_ms and s.accuracy(c) >= floor]
            best = max(within, key=s.accuracy, default=None)
            found = s.best_within(b, floor, max_ms)
            assert (found and found[0]) == best, (k, b, floor, max_ms)
            if found:
                assert found[1] == s.predict_ms(best, b)
        for b in range(1, 9):  # and the fastest at every size, bit for bit
            fastest = min(s.candidates, key=lambda c: (s.predict_ms(c, b), -s.accuracy(c)))
            assert s.fastest_at()[b] == (fastest, s.predict_ms(fastest, b)), (k, b)
    assert s.latency.forward.tail is not None and s.latency.forward.shared != 1.0


def test_forget_predicts_from_the_profile_again_as_when_new():
    profile = _profile({0: 1.0, 1: 2.0})
    p, fresh = LatencyPredictor(profile), LatencyPredictor(profile)
    for k in range(64):  # enough for the measured tail to replace the profile's quantile
        p.observe(k % 2, 1 + k % 2, 3.0 + k % 5)
    assert p.corrected and p.tail is not None
    p.forget()
    assert not p.corrected and p.tail is None
    assert [p.predict_ms(s, b) for s in (0, 1) for b in (1, 2)] == [
        fresh.predict_ms(s, b) for s in (0, 1) for b in (1, 2)
    ]
    p.observe(0, 1, 2.0)  # and it learns again from the start
    assert p.shared == pytest.approx(1.2)


def test_forwards_run_while_requests_arrive_have_their_own_factor():
    # alone the forwards run 1.5x the profile; while requests arrive (the submitting threads
    # hold the interpreter lock between their ops) 3x: each state predicts its own
    p = LatencyPredictor(_profile({0: 1.0, 1: 2.0}), "p50")
    for _ in range(40):
        p.observe(0, 1, 1.5, loaded=False)
        p.observe(0, 1, 3.0, loaded=True)
    assert p.predict_ms(1, 1) == pytest.approx(3.0, rel=0.01)  # quiet: the state it starts in
    assert p.set_loaded(True) and p.loaded
    assert p.predict_ms(1, 1) == pytest.approx(6.0, rel=0.01)
    assert not p.set_loaded(True)  # no change: nothing cached goes stale
    # forgetting drops the current state's factor only: here the loaded state's (a burst of
    # requests all refused on it), and the quiet state keeps what it learned
    p.forget()
    assert p.predict_ms(1, 1) == 2.0 and not p.corrected
    assert p.set_loaded(False)
    assert p.predict_ms(1, 1) == pytest.approx(3.0, rel=0.01)
    p.forget()  # a request alone, refused: the quiet state's
    assert p.predict_ms(1, 1) == 2.0 and not p.corrected
    p.observe(0, 1, 3.0, loaded=True)  # the loaded state's evidence does not undo the forgetting
    assert p.predict_ms(1, 1) == 2.0
    assert p.set_loaded(True) and p.predict_ms(1, 1) == pytest.approx(2.0 * 1.4)  # one 3x after the profile


def test_a_state_never_observed_follows_the_one_that_was():
    p = LatencyPredictor(_profile({0: 1.0}), "p50")
    for _ in range(40):
        p.observe(0, 1, 2.0, loaded=False)
    p.set_loaded(True)
    assert p.predict_ms(0, 1) == pytest.approx(2.0, rel=0.01)  # not the profile's 1.0
    p.observe(0, 1, 4.0, loaded=True)  # its own evidence from now on; the quiet state keeps its own
    assert p.shared > p._factors[0]
    p.set_loaded(False)
    assert p.predict_ms(0, 1) == pytest.approx(2.0, rel=0.01)
