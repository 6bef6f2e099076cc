"""Benchmark suite logic on small models and synthetic tables (nothing timed is asserted)."""

import argparse

import torch

from elastic.bench.load import best_single
from elastic.bench.memory import measure as memory
from elastic.bench.scheduler import decision_time
from elastic.bench.switching import WeightCopyCounter
from elastic.bench.variants import AnchorVariants
from elastic.serving import LatencyProfile


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


def test_best_single_picks_the_most_accurate_that_fits():
    profile = LatencyProfile.from_table({0: {1: 1.0, 8: 4.0}, 1: {1: 3.0, 8: 10.0}, 2: {1: 9.0, 8: 40.0}})
    acc = {0: 0.6, 1: 0.7, 2: 0.8}
    assert best_single(profile, [0, 1, 2], acc, median_budget_ms=20.0, rate=100.0) == 2
    assert best_single(profile, [0, 1, 2], acc, median_budget_ms=5.0, rate=100.0) == 1
    assert best_single(profile, [0, 1, 2], acc, median_budget_ms=20.0, rate=500.0) == 1  # 8 / 40 ms = 200/s
    assert best_single(profile, [0, 1, 2], acc, median_budget_ms=0.5, rate=100.0) == 0  # nothing fits: fastest


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


def test_scheduler_suite_runs_on_synthetic_tables():
    r = decision_time(20, "elastic", depth=4, requests=20)
    assert r["subnets"] == 20 and r["candidates"] == 20 and r["schedule_us"] > 0


def test_bench_cli_lists_every_suite():
    from elastic.bench import SUITES
    from elastic.cli import build_parser

    args = build_parser().parse_args(["bench", "scheduler", "--quick"])
    assert isinstance(args, argparse.Namespace) and args.suite == "scheduler"
    assert set(SUITES) == {"overhead", "switching", "parity", "load", "scheduler", "memory"}
