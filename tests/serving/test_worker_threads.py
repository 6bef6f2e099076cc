"""The worker's threading (serving/worker_threads.py): when OpenMP teams throttle, and the
runtime's warning about it, on a real model."""

import logging
import os

import pytest
import torch

from elastic.serving import Runtime
from elastic.serving import worker_threads as wt

WARNING = "sleeps at every op barrier"


@pytest.mark.parametrize(
    ("teams", "cpus", "throttled"),
    [
        ([2, 2], 2, True),  # the demo's 3-5x: caller and worker teams of two on two cores
        ([2, 1], 2, False),  # a team of one is no team
        ([1, 2], 2, False),
        ([1, 1], 1, False),
        ([2, 2], 3, False),  # 1 + 1 + 1 managed threads: exactly the CPUs
        ([4, 4], 6, True),  # 1 + 3 + 3 = 7
        ([4, 4], 7, False),
        ([2, 2, 2], 3, True),  # two lanes beside the caller
    ],
)
def test_throttles_counts_threads_as_gnu_openmp_does(teams, cpus, throttled):
    # libgomp counts 1 + Σ (team size - 1) managed threads (the master thread of each team
    # is not one it started) and throttles its barrier spin once that exceeds the CPUs
    assert wt.throttles(teams, cpus) is throttled


def test_openmp_cpus_is_what_this_process_may_run_on():
    assert 1 <= wt.openmp_cpus() <= (os.cpu_count() or 1)


@pytest.mark.skipif("OpenMP" not in torch.__config__.parallel_info(), reason="torch's backend is not OpenMP")
@pytest.mark.parametrize(("worker_threads", "lanes", "warned"), [(1, 1, False), (2, 1, True), (1, 2, False)])
def test_the_runtime_warns_when_its_teams_throttle_openmp(
    served_model, served_profile, monkeypatch, caplog, worker_threads, lanes, warned
):
    # the caller runs torch on one thread here (conftest): with one CPU a worker team of two
    # makes 1 + 1 managed threads, over the CPU count; teams of one never do
    monkeypatch.setattr(wt, "openmp_cpus", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="elastic.serving.worker_threads"):
        rt = Runtime(served_model, max_batch_size=8, profile=served_profile, worker_threads=worker_threads, lanes=lanes)
        rt.close()
    messages = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert bool(messages) is warned
    if warned:
        assert "worker team(s) of 2 beside the caller's 1 hold 2 OpenMP threads on 1 CPUs" in messages[0]


def test_the_measurement_table_has_a_row_per_subnet_and_batch_and_a_column_per_setting():
    result = {
        "unit": "median ms per forward",
        "cpus": 2,
        "openmp_cpus": 2,
        "load_average_1min": 0.5,
        "parallel_backend": "ATen parallel backend: OpenMP",
        "rows": [
            {"subnet": 0, "batch": 1, "main, 2 threads": 0.94, "beside an idle team of 2": 5.374},
            {"subnet": 2, "batch": 8, "main, 2 threads": 2.35, "beside an idle team of 2": 5.65},
        ],
    }
    lines = wt.table(result).splitlines()
    assert lines[0] == "# worker threads"
    assert "| subnet, batch | main, 2 threads | beside an idle team of 2 |" in lines
    assert "| 0, 1 | 0.94 | 5.37 |" in lines and "| 2, 8 | 2.35 | 5.65 |" in lines
