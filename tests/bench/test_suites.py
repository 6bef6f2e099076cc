"""Benchmark suite logic on small models and synthetic tables (nothing timed is asserted)."""

import json
import math
import sys
import time

import pytest
import torch

from elastic.bench.memory import measure as memory
from elastic.bench.overhead import WARMUP, refusal_cost
from elastic.bench.overhead import measure as overhead
from elastic.bench.scheduler import decision_time, targets
from elastic.bench.switching import WeightCopyCounter
from elastic.bench.variants import AnchorVariants


def test_anchor_variants_are_separate_copies_with_equal_outputs(tiny_stitched):
    tiny_stitched.set_accuracies({0: 0.5, 1: 0.6, 2: 0.7})
    variants = AnchorVariants(tiny_stitched).eval()
    assert [s.accuracy for s in variants.subnets()] == [0.5, 0.6, 0.7]
    shared = {p.data_ptr() for p in tiny_stitched.parameters()} & {p.data_ptr() for p in variants.parameters()}
    assert not shared
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for k in range(3):
            assert torch.equal(variants(x, subnet=k), tiny_stitched(x, subnet=k))


def test_switching_copies_no_weights_and_the_counter_sees_copies(tiny_stitched):
    params = list(tiny_stitched.parameters())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), WeightCopyCounter(params) as counter:
        for s in (0, 5, 2, 17):
            tiny_stitched(x, subnet=s)
    assert counter.bytes == 0
    with WeightCopyCounter(params) as counter:
        params[0].clone()
    assert counter.bytes == params[0].numel() * 4


def test_memory_counts_stitches_once(tiny_stitched):
    r = memory(tiny_stitched)
    assert r["elastic_bytes"] == r["anchors_only_bytes"] + r["stitch_bytes"]
    assert r["subnets"] == 23


def test_scheduler_suite_counts_every_request_and_checks_targets():
    r = decision_time(20, "elastic", depth=4, requests=50)
    assert r["subnets"] == 20 and r["candidates"] == 20 and r["requests"] == 50
    assert r["batches"] >= 50 // 8  # the queue is drained in batches of at most 8
    assert r["decision_us"] >= r["admit_us"]  # a decision is admission plus its share of scheduling
    rows = [
        {"policy": "elastic", "subnets": 100, "queue_depth": 8, "decision_us": 19.0},
        {"policy": "elastic", "subnets": 1000, "queue_depth": 64, "decision_us": 51.0},
        {"policy": "slackfit", "subnets": 1000, "queue_depth": 64, "decision_us": 500.0},
        {"policy": "elastic", "subnets": 10, "queue_depth": 8, "decision_us": 500.0},
        # judged on the interval over rounds when there is one
        {"policy": "elastic", "subnets": 100, "queue_depth": 64, "decision_us": 18.0, "decision_us_ci95": [15, 24]},
        {"policy": "elastic", "subnets": 100, "queue_depth": 8, "decision_us": 23.0, "decision_us_ci95": [21, 30]},
    ]
    assert [(c["subnets"], c["verdict"], c["pass"]) for c in targets(rows)] == [
        (100, "pass", True),
        (1000, "FAIL", False),
        (100, "within noise", False),
        (100, "FAIL", False),
    ]


def test_scheduler_suite_times_the_priced_path(monkeypatch):
    """Requests arrive while the last batch runs, so the elastic policy prices busy periods."""
    from elastic.serving import BudgetScheduler
    from elastic.serving.demand import Demand

    busy, priced = [], []
    record, curve = Demand.record, BudgetScheduler.charge_curve

    def spy_record(self, now, budget_ms, is_busy=False):
        busy.append(is_busy)
        record(self, now, budget_ms, is_busy)

    def spy_curve(self, sat_weight):
        priced.append(True)
        return curve(self, sat_weight)

    monkeypatch.setattr(Demand, "record", spy_record)
    monkeypatch.setattr(BudgetScheduler, "charge_curve", spy_curve)
    decision_time(20, "elastic", depth=4, requests=50)
    assert sum(busy) > len(busy) / 2  # most arrivals come while a batch runs
    assert priced  # and the policy charged for it


def test_overhead_counts_only_the_timed_batches(tiny_stitched):
    rows = overhead(tiny_stitched, "tiny", 0, repeats=3)
    assert [(r["batch"], r["call"]) for r in rows] == [(1, "infer"), (8, "8 × submit"), (8, "submit_many")]
    one, eight, many = rows
    assert one["mean_runtime_batch"] == 1.0 and one["direct"]["n"] == one["runtime"]["n"] == 3
    # submit_many admits its eight rows under one lock: the worker never sees part of them
    assert many["mean_runtime_batch"] == 8.0
    assert set(one["target"]) == {"added_us_per_request", "verdict", "pass"}
    assert set(eight["target"]) == {"ratio", "verdict", "pass"}
    for row in (eight, many):  # judged on the interval of the per-round ratio, which holds the median
        lo, hi = row["ratio_ci95"]
        assert lo <= row["ratio"] <= hi
        assert row["target"]["pass"] == (hi <= 1.15) == (row["target"]["verdict"] == "pass")
    assert eight["direct"] == many["direct"]  # one interleaved run: the same direct times
    # batch 1: the runtime's own time, the wall time less the forward its Result reports
    median, lo, hi = one["outside_forward_us"]
    assert 0 < lo <= median <= hi < 1e6 * one["runtime"]["p90_ms"] / 1e3
    assert eight["outside_forward_us"] is None and one["caches"] == "as left"


def test_refusal_cost_times_refused_submits_only(tiny_stitched):
    got = refusal_cost(tiny_stitched, 0, repeats=4, per_round=3)
    assert got["counted"] == (4 + WARMUP) * 3  # every call refused (and counted), the warm-up rounds too
    lo, hi = got["us_ci95"]
    assert 0 < lo <= got["us_per_refusal"] <= hi


def test_refit_cadence_times_one_runtime_per_setting_with_its_own_refit_ms(tiny_stitched, monkeypatch):
    from elastic.bench import refit_cadence
    from elastic.bench.overhead import flat_profile, refit_table

    made = []
    real = refit_cadence.Runtime
    monkeypatch.setattr(refit_cadence, "Runtime", lambda *a, **kw: made.append(kw["refit_ms"]) or real(*a, **kw))
    rows = refit_cadence.refit_cadence(tiny_stitched, 0, flat_profile(tiny_stitched, 0), blocks=2, per_block=8)
    assert made == [0.0, 5.0, refit_cadence.REFIT_MS] == [r["refit_ms"] for r in rows]
    assert [r["default"] for r in rows] == [False, False, True]
    for r in rows:  # every block's rounds but the first SKIP of each
        assert r["rounds"] == 2 * (8 - refit_cadence.SKIP)
        lo, hi = r["added_us_ci95"]
        assert lo <= r["added_us_per_request"] <= hi
    assert f"{refit_cadence.REFIT_MS:g} (default)" in refit_table(rows, 2, 8)


def test_overhead_runs_the_cache_state_before_every_timed_call(tiny_stitched):
    calls = []
    rows = overhead(tiny_stitched, "tiny", 0, repeats=3, before=lambda: calls.append(1), batch_sizes=(1,))
    assert [(r["batch"], r["call"], r["caches"]) for r in rows] == [(1, "infer", "evicted")]
    assert len(calls) == 2 * 3  # infer and direct, every timed round


def test_bench_cli_lists_every_suite_and_its_options():
    from elastic.bench import SUITES
    from elastic.cli import build_parser

    args = build_parser().parse_args(["bench", "load", "--quick", "--simulate", "--scenario", "deit"])
    assert (args.suite, args.quick, args.simulate, args.scenario, args.threads) == ("load", True, True, "deit", 1)
    for suite in SUITES:
        assert build_parser().parse_args(["bench", suite]).suite == suite
    assert {"overhead", "switching", "parity", "load", "scheduler", "memory"} <= set(SUITES)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "no-such-suite"])


def test_results_record_command_commit_and_date(tmp_path):
    from elastic.bench.harness import write_results

    write_results(tmp_path, "x", {"rows": [1]}, "| a |", "elastic bench x --quick")
    doc = json.loads((tmp_path / "x.json").read_text())
    assert doc["command"] == "elastic bench x --quick" and doc["rows"] == [1]
    assert doc["commit"] != "unknown" and len(doc["commit"].split("-")[0]) >= 7
    assert doc["date"].startswith("20")
    assert doc["commit"] in (tmp_path / "x.md").read_text()


def test_results_name_the_cpu_they_were_measured_on(tmp_path):
    from elastic.bench.harness import cpu_info

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: avx512f\n"
    )
    info = cpu_info(cpuinfo)
    assert info["cpu_model"] == "AMD EPYC 7B13"  # the first core's
    assert info["cpu_vector"] == ["avx2"]
    assert info["cpu_count"] >= 1
    assert cpu_info(tmp_path / "missing") == {}


def test_lanes_pools_attainment_over_seeds_by_admitted_count():
    from elastic.bench.stats import pooled_attainment

    runs = [{"admitted": 100, "admitted_slo_attainment": 0.99}, {"admitted": 0, "admitted_slo_attainment": None}]
    runs.append({"admitted": 300, "admitted_slo_attainment": 1.0})
    assert pooled_attainment(runs) == pytest.approx((99 + 300) / 400)
    assert math.isnan(pooled_attainment([{"admitted": 0, "admitted_slo_attainment": None}]))


def test_contention_times_every_executor_alone_and_beside_a_busy_thread(tiny_stitched):
    from elastic.bench.contention import BusyThread, compare

    default = sys.getswitchinterval()
    rows, setup = compare(tiny_stitched, [0], repeats=2, duties=(0.0, 0.5), switches=(None, 1e-4))
    conditions = [(1, 0.0, default), (1, 0.5, default), (1, 0.5, 1e-4)]
    assert [(r["batch"], r["duty"], r["switch_interval_s"]) for r in rows] == [
        *conditions,
        *[(8, d, s) for _, d, s in conditions],
    ]
    assert sys.getswitchinterval() == default  # restored
    for r in rows:
        # the child's forward and the traced graph are the eager one
        assert set(r["max_abs_diff_vs_eager"]) == {"process", "traced", "traced_staged"}
        assert max(r["max_abs_diff_vs_eager"].values()) < 1e-4
        assert all(r[name]["median_ms"] > 0 for name in ("eager", "process", "traced", "traced_staged"))
    alone = {"eager": 1.0, "process": 1.0, "traced": 1.0, "traced_staged": 1.0}
    assert all(r["slowdown"] == alone for r in rows if r["duty"] == 0.0)
    assert setup["process_start_s"] > 0
    with BusyThread(0.5) as busy:
        deadline = time.perf_counter() + 5
        while busy.spins == 0 and time.perf_counter() < deadline:
            time.sleep(0.001)
    assert busy.spins > 0
    with pytest.raises(ValueError, match="duty"):
        BusyThread(1.0)


def test_contention_times_the_forward_beside_refused_submits(tiny_stitched):
    from elastic.bench.contention import REFUSAL_BLOCKS, beside_refusals

    got = beside_refusals(tiny_stitched, 0, repeats=2)
    assert got["alone"]["n"] == got["beside"]["n"] == 2 * REFUSAL_BLOCKS
    assert got["achieved_per_s"] > 0 and got["us_per_refusal"] > 0  # the thread ran, and every submit was refused
    assert got["slowdown"] == got["beside"]["median_ms"] / got["alone"]["median_ms"]


def test_goodput_bisection_sizes_each_run_by_its_arrivals(monkeypatch):
    from bench import ray_load

    calls = []

    def fake_point(client, rate, span_s, budgets, seed, images, judge):
        calls.append((rate, span_s))
        return {"requests": round(rate * span_s), "slo_attainment": 1.0 if rate <= 30.0 else 0.5}

    monkeypatch.setattr(ray_load, "run_point", fake_point)
    monkeypatch.setattr(ray_load.time, "sleep", lambda s: None)
    cap, probes = ray_load.goodput_capacity(None, None, None, None, 200.0, requests=200)
    assert len(probes) == ray_load.GOODPUT_PROBES and 20.0 < cap <= 30.0
    # a run lasts 3 s or as long as ~200 arrivals take, whichever is longer
    assert all(s == max(3.0, 200 / r) and round(r * s) >= 200 for r, s in calls)
    assert [p["requests"] for p in probes] == [round(r * s) for r, s in calls]
    assert (
        "~200 arrivals" in ray_load._probe_sizes(probes) and ray_load._probe_sizes([{"rate_per_s": 1.0}]) == "3 s each"
    )


def test_switch_interval_runs_each_contender_at_its_interval_and_restores_it(monkeypatch):
    from types import SimpleNamespace

    from elastic.bench import switch_interval as si
    from elastic.bench.arrivals import BudgetDistribution
    from elastic.bench.load import QUICK

    seen = []

    def fake_run_one(mode, scenario, calib, policy, arrivals, budgets, seed, scored_from=0):
        seen.append((policy, round(sys.getswitchinterval(), 9)))  # CPython keeps it in whole µs
        acc = 0.5 if seen[-1][1] == si.SHORT_S else 0.4
        return {
            "effective_accuracy": acc,
            "admitted": 10,
            "admitted_slo_attainment": 0.9,
            "shed": 1,
            "rejected_share": 0.2,
            "forward_ms": {"p50": 2.0},
            "submit_lag_ms": {"p50": 0.1},
        }

    monkeypatch.setattr(si, "run_one", fake_run_one)
    default = sys.getswitchinterval()
    calib = SimpleNamespace(capacity_per_s=100.0, budgets=BudgetDistribution(5.0, 50.0), smallest=0)
    contenders = [(p, s) for p in ("elastic", "static:0") for s in (None, si.SHORT_S)]
    point = si._point(None, calib, QUICK, "poisson", 1.0, 2, contenders)
    assert sorted(seen) == sorted([(p, round(s or default, 9)) for p, s in contenders] * 2)
    assert sys.getswitchinterval() == default
    gain = point["short_minus_default"]["elastic"]["effective_accuracy"]
    assert gain["mean"] == pytest.approx(0.1)
    assert point["contenders"]["elastic @ 20 µs"]["shed_share"] == pytest.approx(0.1)
    assert "+10.0" in si._table([point], calib, 2, default)
