"""How the engine's worker thread runs torch, and when its OpenMP teams throttle.

Torch's CPU intra-op parallelism is an OpenMP thread team, one team per OS thread that runs
parallel ops: the main thread's team and the worker's team are separate sets of threads,
and a thread keeps its team (idle) until it exits. Every parallel op ends at a barrier, and
GNU OpenMP (the backend of torch's Linux wheels) waits there by spinning about 300,000 times
before it sleeps on a futex — unless the process holds more OpenMP threads than CPUs: it
counts 1 + Σ (team size − 1) over every team ever formed, and above the CPU count it spins
only ~100 times (libgomp's `do_wait`, `gomp_throttled_spin_count_var`). Then every barrier
of a forward is a futex sleep and wake-up, and a small forward has dozens of barriers.

That is why a forward of the demo model in the worker was 3-5x slower than on the main
thread (DESIGN.md, "torch from a second Python thread"): not the worker thread as such, nor
other load, but two two-thread teams on two CPUs. It needs no concurrency — a second team
that ran one forward and now sleeps is enough (bench/worker_threads.py, `_beside`; the main
thread's own forwards slow down just as much) — and it goes away when either team has one
thread. Under other load a spinning teammate may also wait for a core (the older measurement,
docs/serving.md). `python -m elastic.bench.worker_threads` measures both on this machine
(interleaved; it records the load average); `throttles` predicts the first.

The engine's choice (`Runtime(worker_threads=...)`): the worker calls
`torch.set_num_threads(n)` on itself before its first forward, with n = the constructing
thread's `torch.get_num_threads()` unless told otherwise — the worker runs with the
threading its caller chose and profiled with (profiles are measured on the worker), and
caller-runs steps (intake.py) run with the caller's own. The runtime logs a warning when
those teams throttle (`warn_if_throttled`): on a small CPU, choose one thread
(`torch.set_num_threads(1)` before building the runtime, or `worker_threads=1`); see
docs/serving.md for the numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

log = logging.getLogger(__name__)


def configure_worker_threads(num_threads: int | None) -> int:
    """Set torch's intra-op threads for the calling (worker) thread; returns the count used.

    Args:
        num_threads: threads for this thread's OpenMP team; None keeps torch's default.
    """
    import torch

    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()


def openmp_cpus() -> int:
    """The CPUs GNU OpenMP counts as available: those this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def throttles(teams: Sequence[int], cpus: int | None = None) -> bool:
    """Whether OpenMP teams of these sizes, one per OS thread that runs parallel torch ops,
    make GNU OpenMP throttle its barrier spin (the module docstring): 1 + Σ (size − 1)
    managed threads over `cpus` (default: `openmp_cpus()`). A team of one is no team."""
    cpus = openmp_cpus() if cpus is None else cpus
    return 1 + sum(t - 1 for t in teams if t > 1) > cpus


def warn_if_throttled(caller_threads: int, worker_threads: int, workers: int = 1) -> bool:
    """Log a warning when `workers` worker teams of `worker_threads` beside the caller's
    team of `caller_threads` (caller-runs steps run there) throttle OpenMP; returns whether
    they do. Only for torch's OpenMP backend: the others do not count threads this way."""
    import torch

    teams = [caller_threads, *[worker_threads] * workers]
    if "OpenMP" not in torch.__config__.parallel_info() or not throttles(teams):
        return False
    log.warning(
        "torch threads: %d worker team(s) of %d beside the caller's %d hold %d OpenMP threads on %d CPUs, so"
        " GNU OpenMP sleeps at every op barrier and small forwards run several times slower (docs/serving.md,"
        " 'Worker threading'); call torch.set_num_threads(1) before building the runtime, or pass worker_threads=1",
        workers,
        worker_threads,
        caller_threads,
        1 + sum(t - 1 for t in teams if t > 1),
        openmp_cpus(),
    )
    return True
