"""Served capacity and the budget range the load scenarios draw from."""

import pytest
import torch

from elastic.serving import LatencyProfile, budget_range, served_capacity


def table():
    # subnet 0 the fastest, 1 the largest; tail=2 makes every p99 twice its p50
    return LatencyProfile.from_table({0: {1: 2.0, 8: 4.0}, 1: {1: 5.0, 8: 20.0}}, tail=2.0)


def test_budgets_span_twice_a_lone_request_to_four_full_batches_of_the_largest():
    lo, hi = budget_range(table(), 0, 1, per_request_ms=0.25, per_batch_ms=0.5, max_batch_size=8)
    assert lo == pytest.approx(2 * (2.0 + 0.5 + 0.25))  # the p50 forward, not the p99, plus the runtime's cost
    assert hi == pytest.approx(4 * (20.0 + 0.5 + 8 * 0.25))


def test_the_upper_end_is_at_least_twice_the_lower():
    flat = LatencyProfile.from_table({0: {1: 10.0, 8: 10.5}, 1: {1: 1.0, 8: 2.0}})
    lo, hi = budget_range(flat, 0, 1)
    assert (lo, hi) == (20.0, 40.0)


def test_a_subnet_the_profile_lacks_is_a_key_error():
    with pytest.raises(KeyError):
        budget_range(table(), 0, 7)


def test_served_capacity_reports_the_engines_fitted_overhead(tiny_stitched):
    from elastic.serving.profiler import measure_latency

    example = torch.randn(*tiny_stitched.input_size())
    profile = measure_latency(tiny_stitched, example, (1, 8), repeats=2, subnets=[0])
    served = served_capacity(tiny_stitched, example, 0, profile, max_batch_size=8, burst=32, singles=3)
    assert served.subnet == 0 and served.throughput_per_s > 0 and served.batch1_ms > 0
    # the runtime timed its own work around each forward: a batch cost something
    assert served.per_batch_ms + 8 * served.per_request_ms > 0
