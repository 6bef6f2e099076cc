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


def test_openmp_cpus_is_what_this_process_may_run_on(monkeypatch):
    # libgomp counts the CPUs in the process's affinity mask, not the machine's
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert wt.openmp_cpus() == 3
    assert wt.throttles([2, 2]) is False  # 1 + 1 + 1 managed threads on those 3
    assert wt.throttles([2, 2, 2]) is True


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
