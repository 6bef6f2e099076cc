"""The load suite's method: oracle selection, targets, the real shortlist, and an end-to-end run."""

import argparse
import json
import math

import pytest
import torch

from elastic.bench import headroom, margin, policy_variants, pricing, refit, ride_along, targets
from elastic.bench.arrivals import BudgetDistribution
from elastic.bench.load import FULL, LoadPlan, Span, focused, run_scenarios, shortlist, warmed_workload, workload
from elastic.bench.load_calibration import Calibration
from elastic.bench.load_report import FIXED_MARGIN, summarize, target_summary
from elastic.bench.outcomes import ANSWERED, REJECTED, BernoulliJudge
from elastic.bench.replay import replay_outcomes
from elastic.bench.scenarios import Scenario
from elastic.bench.simulate import ServiceModel
from elastic.errors import BudgetInfeasible, ConfigError, Overloaded
from elastic.serving import LatencyProfile, Runtime
from elastic.serving.predictor import TAIL_QUANTILE


def calibration(capacity=100.0, smallest_capacity=250.0) -> Calibration:
    profile = LatencyProfile.from_table({s: {1: 1.0 + s, 8: 4.0 + 4 * s} for s in range(4)})
    return Calibration(
        profile=profile,
        candidates=[0, 1, 3],
        variants_profile=profile,
        smallest=0,
        largest=2,
        capacity_per_s=capacity,
        smallest_capacity_per_s=smallest_capacity,
        budgets=BudgetDistribution(2.0, 50.0),
        service=ServiceModel(profile),
        variants_service=ServiceModel(profile),
        served={},
        seconds=0.0,
    )


def fake_run(policy, load, repeat, eff, admitted=100, shed=0, late=0):
    answered = admitted - shed
    return {
        "pattern": "poisson",
        "load": load,
        "repeat": repeat,
        "policy": policy,
        "contender": policy,
        "requests": 120,
        "effective_accuracy": eff,
        "slo_attainment": eff,
        "admitted_slo_attainment": (answered - late) / admitted,
        "rejected_share": 20 / 120,
        "shed_share": shed / admitted,
        "p50_ms": 3.0,
        "p99_ms": 9.0,
        "mean_batch_size": 2.0,
        "admitted": admitted,
        "answered": answered,
        "shed": shed,
        "rejected": 20,
        "late": late,
    }


def test_the_oracle_is_the_best_static_and_targets_are_checked_per_point():
    runs = []
    for r, noise in enumerate((0.0, 0.01, -0.01)):
        # load 0.5 (not in the middle range): elastic ties static:1, the best static
        runs += [
            fake_run("elastic", 0.5, r, 0.80 + noise),
            fake_run("static:0", 0.5, r, 0.60 + noise),
            fake_run("static:1", 0.5, r, 0.80 + noise),
            fake_run("static:2", 0.5, r, 0.70 + noise),
        ]
        # load 2 (middle: 1 < 2 <= 2.5): elastic 3 points above the best static, with sheds and lates
        runs += [
            fake_run("elastic", 2.0, r, 0.53 + noise, shed=2, late=1),
            fake_run("static:0", 2.0, r, 0.50 + noise),
            fake_run("static:1", 2.0, r, 0.30 + noise),
            fake_run("static:2", 2.0, r, 0.10 + noise),
        ]
    low, mid = summarize(runs, calibration())
    assert low["oracle"] == {"policy": "static:1", "subnet": 1} and not low["middle_range"]
    assert low["elastic_minus_oracle"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert low["targets"]["not_below_oracle"]["pass"] and low["targets"]["five_points_above_oracle"] is None
    assert low["targets"]["admitted_within_budget"]["pass"] and low["targets"]["shed_after_admission"]["pass"]
    assert low["contenders"]["static:2"]["effective_accuracy"]["mean"] == pytest.approx(0.70)
    assert low["contenders"]["elastic"]["effective_accuracy"]["n"] == 3

    assert mid["oracle"]["subnet"] == 0 and mid["middle_range"]
    assert mid["elastic_minus_oracle"]["mean"] == pytest.approx(0.03)
    assert mid["targets"]["not_below_oracle"]["pass"]
    assert not mid["targets"]["five_points_above_oracle"]["pass"]
    assert mid["targets"]["admitted_within_budget"]["value"] == pytest.approx(97 / 100)  # pooled
    assert not mid["targets"]["admitted_within_budget"]["pass"]
    assert mid["targets"]["shed_after_admission"]["value"] == pytest.approx(0.02)
    assert not mid["targets"]["shed_after_admission"]["pass"]
    summary = target_summary({"x": {"points": [low, mid]}})
    assert summary["five_points_above_oracle"] == {"pass": 0, "fail": 1}
    assert summary["not_below_oracle"] == {"pass": 2, "fail": 0}


def test_elastic_below_the_oracle_beyond_the_interval_fails():
    runs = []
    for r, noise in enumerate((0.0, 0.01, -0.01)):
        runs += [fake_run("elastic", 1.0, r, 0.70 + noise), fake_run("static:1", 1.0, r, 0.75 + noise)]
    (p,) = summarize(runs, calibration())
    assert p["elastic_minus_oracle"]["hi"] < 0 and not p["targets"]["not_below_oracle"]["pass"]


def test_middle_range_comes_from_served_capacities():
    calib = calibration(capacity=100.0, smallest_capacity=250.0)
    assert calib.middle_range == (1.0, 2.5)
    assert [calib.in_middle(x) for x in (0.5, 1.0, 1.5, 2.5, 3.0)] == [False, False, True, True, False]
    assert calib.statics() == [0, 1, 2, 3]  # the front plus the largest anchor, fastest first


def test_real_loads_gain_the_middle_of_the_middle_range_when_the_grid_misses_it():
    grid = (0.25, 1.0, 1.5, 2.0, 3.0)
    assert calibration(capacity=100.0, smallest_capacity=250.0).real_loads(grid) == list(grid)  # 1.5 lies in it
    assert calibration(capacity=100.0, smallest_capacity=130.0).real_loads(grid) == [0.25, 1.0, 1.15, 1.5, 2.0, 3.0]
    assert calibration(capacity=100.0, smallest_capacity=90.0).real_loads(grid) == list(grid)  # no middle range


def test_shortlist_takes_both_anchors_and_the_simulations_best():
    calib = calibration()
    plan = LoadPlan(("poisson",), (1.0,), (0.5, 1.25), 3, 3, Span(1, 1, 1), Span(1, 1, 1), oracle_extra=1, deit_front=3)

    def point(load, effs):
        return {
            "pattern": "poisson",
            "load": load,
            "contenders": {p: {"effective_accuracy": {"mean": e}} for p, e in effs.items()},
        }

    sim_points = [
        point(0.5, {"static:0": 0.5, "static:1": 0.6, "static:3": 0.9}),
        point(1.25, {"static:0": 0.5, "static:1": 0.8, "static:3": 0.2, "elastic": 0.99}),
    ]
    # 1.75: the middle of the middle range (1x-2.5x), which the grid misses; nearest point: 1.25
    assert shortlist(sim_points, plan, calib) == {("poisson", 1.0): [0, 1, 2], ("poisson", 1.75): [0, 1, 2]}


def test_a_focused_plan_runs_exactly_the_points_and_seeds_asked_for():
    calib = calibration(capacity=100.0, smallest_capacity=130.0)  # middle range 1x-1.3x: the grid misses it
    assert FULL.real_loads_of(calib) == [0.25, 1.0, 1.15, 1.5, 2.0, 3.0]
    plan = focused(FULL, "poisson", "1, 0.5,1", 12)
    assert (plan.patterns, plan.real_loads, plan.repeats) == (("poisson",), (0.5, 1.0), 12)
    assert plan.real_loads_of(calib) == [0.5, 1.0]  # no middle added to loads given by hand
    assert (plan.sim_loads, plan.span, plan.warmup) == (FULL.sim_loads, FULL.span, FULL.warmup)
    assert focused(FULL, None, None, None) == FULL
    assert focused(FULL, "on_off,poisson", None, None).patterns == ("on_off", "poisson")
    for bad in (("bursty", None, None), ("", None, None), (None, "1,x", None), (None, "0", None)):
        with pytest.raises(ConfigError):
            focused(FULL, *bad)
    with pytest.raises(ConfigError, match="at least 2"):
        focused(FULL, None, None, 1)


@pytest.fixture
def one_thread():
    """As `elastic bench` runs (--threads 1): two threads on a busy 2-core machine crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_scenario(model, accuracy: dict[int, float], **options) -> Scenario:
    """A scenario over a tiny synthetic model whose answers are judged with `accuracy`."""
    model.set_accuracies(accuracy)
    return Scenario(
        name="tiny",
        label="tiny synthetic StitchedNet (tests only)",
        model=model,
        images=torch.randn(16, 3, 32, 32),
        real_judge=lambda seed: BernoulliJudge(accuracy, seed),
        accuracy_source="synthetic accuracies",
        profile_repeats=3,
        capacity_burst=24,
        capacity_singles=3,
        **options,
    )


@pytest.mark.slow
def test_load_suite_end_to_end_on_a_tiny_model(tiny_stitched, tmp_path, one_thread, monkeypatch):
    torch.manual_seed(0)
    accuracy = {
        s.id: 0.5 + 0.4 * s.flops / max(t.flops for t in tiny_stitched.subnets()) for s in tiny_stitched.subnets()
    }
    scenario = tiny_scenario(tiny_stitched, accuracy)
    plan = LoadPlan(
        ("poisson",),
        (0.5,),
        (0.5, 2.0),
        3,
        2,
        Span(0.25, 0.5, 10),
        Span(0.5, 5.0, 100),
        oracle_extra=1,
        deit_front=3,
        warmup=Span(0.25, 0.25, 10),
    )
    result = run_scenarios({"tiny": lambda: scenario}, plan, tmp_path, "test command")
    real = json.loads((tmp_path / "load.json").read_text())
    sim = json.loads((tmp_path / "load_sim.json").read_text())
    assert real["mode"] == "real" and sim["mode"] == "simulated"
    for doc in (real, sim):
        assert doc["command"] == "test command" and doc["commit"] and doc["date"]
    calib = real["scenarios"]["tiny"]["calibration"]
    # the tightest budget is twice the engine's own prediction for a lone request on the
    # smallest anchor (the profile's median forward plus the fitted overhead), not a served median
    over = calib["overhead_ms"]
    alone_ms = calib["profile_p50_ms"][str(calib["smallest_anchor"])]["1"] + over["per_batch"] + over["per_request"]
    assert calib["budget_bounds_ms"][0] == pytest.approx(2 * alone_ms)
    assert set(calib["served"][str(calib["largest_anchor"])]) >= {"batch1_ms", "per_request_ms", "per_batch_ms"}
    lo, hi = calib["middle_range"]
    points = real["scenarios"]["tiny"]["points"]
    # the grid's 0.5x, and the middle of the measured middle range when 0.5x is not in it
    assert [p["load"] for p in points] == (
        [0.5] if not hi > lo or lo < 0.5 <= hi else sorted([0.5, round((lo + hi) / 2, 2)])
    )
    point = points[0]
    policies = set(point["contenders"])
    assert {"elastic", "slackfit", "infaas", f"static:{calib['smallest_anchor']}"} <= policies
    assert f"static:{calib['largest_anchor']}" in policies
    assert point["contenders"]["elastic"]["seeds"] == 3
    # elastic with its planning margin held fixed runs beside it, paired per point
    assert FIXED_MARGIN in policies and point["elastic_minus_fixed_margin"]["n"] == 3
    for doc in (real, sim):
        for r in doc["scenarios"]["tiny"]["runs"]:
            if r["policy"] == FIXED_MARGIN:
                assert r["planning_quantile"] == TAIL_QUANTILE
            else:
                assert 0.5 <= r["planning_quantile"] <= 0.99
    runs = real["scenarios"]["tiny"]["runs"]
    # interleaving: at each load every contender runs on seed r before any runs on seed r + 1
    for load in {r["load"] for r in runs}:
        order = [r["repeat"] for r in runs if r["load"] == load]
        assert order == sorted(order)
    assert all(r["requests"] > 0 and 0.25 <= r["duration_s"] <= 0.5 for r in runs)
    # every run warmed up on the first 0.25 s of its trace, unscored (headroom below
    # regenerates each trace and checks its scored part has the run's request count)
    for doc in (real, sim):
        assert doc["scenarios"]["tiny"]["warmup"] == {"min_s": 0.25, "max_s": 0.25, "requests": 10}
        assert all(r["warmup_s"] == 0.25 and r["warmup_requests"] > 0 for r in doc["scenarios"]["tiny"]["runs"])
    assert "unscored warm-up" in (tmp_path / "load.md").read_text()
    assert all(r["submit_lag_ms"]["max"] >= r["submit_lag_ms"]["p50"] >= 0 for r in runs)
    answered = [r for r in runs if r["answered"]]
    assert answered and all(
        r["forward_ms"]["max"] >= r["forward_ms"]["p99"] >= r["forward_ms"]["p50"] > 0 for r in answered
    )
    # the simulation runs every static on the front, the real run a shortlist of them
    sim_point = sim["scenarios"]["tiny"]["points"][0]
    assert {f"static:{s}" for s in calib["candidates"]} <= set(sim_point["contenders"])
    assert set(point["targets"]) == {
        "not_below_oracle",
        "five_points_above_oracle",
        "admitted_within_budget",
        "shed_after_admission",
    }
    assert (tmp_path / "load.png").is_file() and (tmp_path / "load_sim.png").is_file()
    assert "REAL" in (tmp_path / "load.md").read_text() and "SIMULATED" in (tmp_path / "load_sim.md").read_text()
    assert "SIMULATED" not in (tmp_path / "load.md").read_text()
    # the no-queue ceiling: per-request choice bounds every static
    bound = calib["no_queue_bound"]
    assert bound["per_request"] >= max(bound["static"].values()) == bound["static"][str(bound["best_static"])]
    assert "No-queue bound" in (tmp_path / "load.md").read_text()
    assert "The machine under load" in (tmp_path / "load.md").read_text()
    assert "The machine under load" not in (tmp_path / "load_sim.md").read_text()
    assert math.isfinite(result["seconds"])
    # the fluid bound over the same traces (regenerated from their seeds): every real point,
    # every seed, and over all served subnets at least the oracle's one subnet's bound
    assert set(calib["accuracy"]) == {
        str(s) for s in {*calib["candidates"], calib["smallest_anchor"], calib["largest_anchor"]}
    }
    room = headroom.run(argparse.Namespace(out=tmp_path, model=None, command="test headroom"))["scenarios"]["tiny"]
    assert [(p["pattern"], p["load"]) for p in room["points"]] == [(p["pattern"], p["load"]) for p in points]
    for p in room["points"]:
        assert len(p["bounds_per_seed"]) == 3 and p["submit_lag_ms_p50_worst"] >= 0
        assert all(
            0 < o <= b + 1e-9 <= 1 for o, b in zip(p["oracle_bounds_per_seed"], p["bounds_per_seed"], strict=True)
        )
    saved = json.loads((tmp_path / "headroom.json").read_text())
    assert saved["source"]["commit"] == real["commit"] and "fluid bound" in (tmp_path / "headroom.md").read_text()
    # the price sweep on the same calibration: every price and the smallest anchor, with
    # batches that never pause and with batches that pause at the model's block boundaries
    monkeypatch.setattr(pricing, "LOADS", {"poisson": (1.0,)})
    monkeypatch.setattr(pricing, "QUICK_REQUESTS", 200)
    monkeypatch.setattr(pricing, "MIN_SECONDS", 0.5)
    stages = {s.id: tiny_stitched.stage_fractions(s.id) for s in tiny_stitched.subnets()}
    monkeypatch.setattr(pricing, "stage_fractions", lambda name, model_dir: stages)
    args = argparse.Namespace(out=tmp_path, model=None, quick=True, scenario="all", command="test pricing")
    swept = pricing.run(args)["scenarios"]["tiny"]
    assert [(p["pausing"], p["pattern"], p["load"]) for p in swept["points"]] == [
        (False, "poisson", 1.0),
        (True, "poisson", 1.0),
    ]
    names = {*(f"elastic, price {x:g}" for x in pricing.PRICES), f"static smallest ({calib['smallest_anchor']})"}
    for p in swept["points"]:
        assert set(p["contenders"]) == names
        assert p["contenders"]["elastic, price 1"]["minus_price_1"]["mean"] == 0.0
        assert all(0 < c["expected_accuracy"]["mean"] <= 1 for c in p["contenders"].values())
    saved = json.loads((tmp_path / "pricing.json").read_text())
    assert saved["source"]["commit"] == real["commit"] and saved["requests_per_run"] == 200
    # the planning margin, fixed and following the SLO, on the same calibration
    monkeypatch.setattr(margin, "LOADS", {"poisson": (1.0,)})
    monkeypatch.setattr(margin, "QUICK_REQUESTS", 200)
    monkeypatch.setattr(margin, "MIN_SECONDS", 0.5)
    monkeypatch.setattr(margin, "stage_fractions", lambda name, model_dir: stages)
    paused_at = []  # the stages every simulated run got: batches pause, as the runtime's do by default
    simulate = policy_variants.simulate
    monkeypatch.setattr(
        policy_variants, "simulate", lambda *a, **kw: paused_at.append(kw["stages"]) or simulate(*a, **kw)
    )
    args = argparse.Namespace(out=tmp_path, model=None, quick=True, scenario="all", command="test margin")
    swept = margin.run(args)["scenarios"]["tiny"]
    assert paused_at and all(s is stages for s in paused_at)
    monkeypatch.setattr(policy_variants, "simulate", simulate)
    (point,) = swept["points"]
    assert (point["pattern"], point["load"], set(point["contenders"])) == ("poisson", 1.0, set(margin.CONTENDERS))
    fixed, fed = point["contenders"]["fixed quantile"], point["contenders"]["SLO feedback (0.99)"]
    assert fixed["final_quantile"] == [margin.TAIL_QUANTILE] * 2  # never moved
    assert all(0.5 <= q <= 0.99 for q in fed["final_quantile"])
    assert fixed["minus_fixed"]["mean"] == 0.0
    assert all(0 < c["admitted_in_budget"]["mean"] <= 1 for c in point["contenders"].values())
    saved = json.loads((tmp_path / "margin.json").read_text())
    assert saved["source"]["commit"] == real["commit"] and saved["requests_per_run"] == 200
    # a request left for a later batch, credited or not, on the same calibration
    monkeypatch.setattr(ride_along, "LOADS", {"poisson": (1.0,)})
    monkeypatch.setattr(ride_along, "QUICK_REQUESTS", 200)
    monkeypatch.setattr(ride_along, "MIN_SECONDS", 0.5)
    monkeypatch.setattr(ride_along, "stage_fractions", lambda name, model_dir: stages)
    args = argparse.Namespace(out=tmp_path, model=None, quick=True, scenario="all", command="test ride_along")
    (point,) = ride_along.run(args)["scenarios"]["tiny"]["points"]
    assert (point["pattern"], point["load"], set(point["contenders"])) == ("poisson", 1.0, set(ride_along.CONTENDERS))
    assert point["contenders"][ride_along.BASE]["minus_no_credit"]["mean"] == 0.0
    assert all(0 < c["expected_accuracy"]["mean"] <= 1 for c in point["contenders"].values())
    saved = json.loads((tmp_path / "ride_along.json").read_text())
    assert saved["source"]["commit"] == real["commit"] and "− no credit" in (tmp_path / "ride_along.md").read_text()
    # the latency model folded per batch and in groups, on the same calibration
    monkeypatch.setattr(refit, "LOADS", {"poisson": (1.0,)})
    monkeypatch.setattr(refit, "QUICK_REQUESTS", 200)
    monkeypatch.setattr(refit, "MIN_SECONDS", 0.5)
    monkeypatch.setattr(refit, "stage_fractions", lambda name, model_dir: stages)
    folded_every = []  # the refit_ms every simulated run got
    monkeypatch.setattr(
        policy_variants, "simulate", lambda *a, **kw: folded_every.append(kw["refit_ms"]) or simulate(*a, **kw)
    )
    args = argparse.Namespace(out=tmp_path, model=None, quick=True, scenario="all", command="test refit")
    (point,) = refit.run(args)["scenarios"]["tiny"]["points"]
    monkeypatch.setattr(policy_variants, "simulate", simulate)
    assert sorted(set(folded_every)) == [0.0, 5.0, refit.REFIT_MS]
    assert list(point["contenders"]) == [refit.name_of(ms) for ms in (0.0, 5.0, refit.REFIT_MS)]
    assert point["contenders"]["refit_ms=0"]["minus_per_batch"]["mean"] == 0.0
    assert all(0 < c["expected_accuracy"]["mean"] <= 1 for c in point["contenders"].values())
    saved = json.loads((tmp_path / "refit.json").read_text())
    assert saved["source"]["commit"] == real["commit"] and "− per batch" in (tmp_path / "refit.md").read_text()
    # the targets summary counts what the load files count, real and simulated apart
    args = argparse.Namespace(out=tmp_path, command="test targets")
    rows = targets.run(args)["rows"]
    for name, mode in (("load", "real"), ("load_sim", "simulated")):
        counted = json.loads((tmp_path / f"{name}.json").read_text())["targets"]
        for key, (asks, _) in targets.LOAD_TARGETS.items():
            mine = [r for r in rows if r["target"] == asks and r["scope"] == f"tiny, {mode}"]
            judged = counted.get(key, {"pass": 0, "fail": 0})  # absent: no point judged (no middle range)
            assert sum(r["met"] for r in mine) == judged["pass"]
            assert sum(r["of"] - r["met"] for r in mine) == judged["fail"]
    assert json.loads((tmp_path / "targets.json").read_text())["missing"] == ["scheduler", "overhead"]


@pytest.mark.slow
def test_a_scenario_served_by_the_process_executor_shares_one_child_and_ends_it(
    tiny_stitched, tmp_path, one_thread, monkeypatch
):
    from elastic.serving.process_executor import ProcessExecutor

    accuracy = {s.id: 0.5 + 0.01 * s.id for s in tiny_stitched.subnets()}
    scenario = tiny_scenario(tiny_stitched, accuracy, executor="process")
    made = []
    executor_for = Scenario.executor_for

    def recording(self, model):
        ex = executor_for(self, model)
        made.append(ex)
        return ex

    monkeypatch.setattr(Scenario, "executor_for", recording)
    plan = LoadPlan(
        ("poisson",), (0.5,), (0.5,), 2, 2, Span(0.25, 0.25, 10), Span(0.5, 1.0, 100), oracle_extra=1, deit_front=3
    )
    run_scenarios({"tiny": lambda: scenario}, plan, tmp_path, "test command")
    children = {id(ex): ex for ex in made if isinstance(ex, ProcessExecutor)}
    assert len(children) == 1  # the model's: one child for calibration and every real run
    (child,) = children.values()
    assert child._proc.poll() is not None  # ended with the suite
    assert all(ex.name == "eager" for ex in made if ex is not child)  # INFaaS's separate models
    real = json.loads((tmp_path / "load.json").read_text())["scenarios"]["tiny"]
    assert real["executor"] == "process"
    assert all(r["failed"] == 0 and r["answered"] > 0 for r in real["runs"])


def test_span_aims_for_a_request_count_within_bounds():
    span = Span(2.0, 6.0, 40)
    assert span.seconds(1000.0) == 2.0  # a fast model: the floor
    assert span.seconds(10.0) == 4.0  # 40 requests at 10 / s
    assert span.seconds(1.0) == 6.0  # a slow one: the ceiling


def test_a_warm_up_is_the_start_of_one_trace():
    budgets = BudgetDistribution(5.0, 50.0)
    arrivals, budget, first = warmed_workload("on_off", 400.0, 0.5, 1.0, budgets, "seed")
    assert (arrivals, budget) == workload("on_off", 400.0, 1.5, budgets, "seed")
    assert 0 < first < len(arrivals) and arrivals[first - 1] < 0.5 <= arrivals[first]
    assert warmed_workload("poisson", 400.0, 0.0, 1.0, budgets, "seed")[2] == 0  # no warm-up: all scored


def test_a_trace_with_no_scored_arrival_is_drawn_again():
    # on/off at a low rate behind a warm-up: some seeds leave the scored second empty
    budgets = BudgetDistribution(5.0, 50.0)
    empty = [
        s
        for s in (f"seed {k}" for k in range(200))
        if warmed_workload("on_off", 20.0, 1.0, 1.0, budgets, s, redraw=False)[2]
        == len(workload("on_off", 20.0, 2.0, budgets, s)[0])
    ]
    assert empty  # the case exists
    for seed in empty[:5]:
        arrivals, budget, first = warmed_workload("on_off", 20.0, 1.0, 1.0, budgets, seed)
        assert first < len(arrivals) and arrivals[first] >= 1.0  # a scored arrival, after the warm-up
        assert (arrivals, budget, first) == warmed_workload("on_off", 20.0, 1.0, 1.0, budgets, seed)  # from the seed
    with pytest.raises(ValueError, match="no arrival"):  # a rate too low for the window
        warmed_workload("poisson", 1e-9, 1.0, 1.0, budgets, "seed")


def test_the_driver_splits_the_stream_once_and_writes_refusals_after_the_run():
    # the driver shares the interpreter with the worker: indexing a tensor per request is a
    # tensor operation, which lets go of the interpreter lock in the middle of the driver's turn
    images = torch.randn(3, 1, 4, 4)
    seen = []

    class Refusing:
        def submit(self, x, budget):
            seen.append(x)
            raise (BudgetInfeasible if budget < 5 else Overloaded)("refused")

    outcomes = replay_outcomes(Refusing(), images, [0.0] * 6, [1.0, 9.0] * 3, judge=None)
    assert [(o.status, o.reason, o.budget_ms) for o in outcomes] == [
        (REJECTED, "infeasible", 1.0),
        (REJECTED, "overloaded", 9.0),
    ] * 3
    assert seen[0] is seen[3] and seen[1] is seen[4]  # one view per image, split before the run
    torch.testing.assert_close(seen[2], images[2])


def test_warm_up_requests_run_but_are_not_scored(tiny_stitched, one_thread):
    accuracy = {s.id: 0.9 for s in tiny_stitched.subnets()}
    scenario = tiny_scenario(tiny_stitched, accuracy)
    arrivals = [0.002 * k for k in range(12)]
    budgets = [1e5] * 12  # a static subnet and budgets no forward misses: every request is answered
    profile = LatencyProfile.from_table({s.id: {1: 1.0, 8: 2.0} for s in tiny_stitched.subnets()})
    with torch.inference_mode(), Runtime(tiny_stitched, policy="static:0", profile=profile) as rt:
        lag, forward = [], []
        outcomes = replay_outcomes(
            rt, scenario.images, arrivals, budgets, scenario.real_judge(0), lag=lag, forward_ms=forward, scored_from=5
        )
        answered = rt.metrics.registry.get_sample_value("elastic_requests_total", {"outcome": "ok"})
    assert len(outcomes) == len(lag) == len(forward) == 7  # requests 5..11 only
    assert all(o.status == ANSWERED for o in outcomes)
    assert answered == 12  # the five before them ran too, and were waited for


@pytest.mark.parametrize(("executor", "pauses"), [("traced", False), ("process", False), ("traced_staged", True)])
def test_real_runs_through_an_executor_pause_only_where_it_can(tiny_stitched, executor, pauses):
    from elastic.bench.load import _served_by

    scenario = _served_by(lambda: tiny_scenario(tiny_stitched, {0: 0.5}), executor)()
    assert scenario.executor == executor and scenario.preempt is pauses
    assert ("batches never pause" in scenario.label) is not pauses
