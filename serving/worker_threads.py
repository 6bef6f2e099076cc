"""How the engine's worker thread runs torch, and the measurement behind that choice.

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
that ran one forward and now sleeps is enough (`beside` below; the main thread's own
forwards slow down just as much) — and it goes away when either team has one thread.
Under other load a spinning teammate may also wait for a core (the older measurement,
docs/serving.md). `python -m elastic.serving.worker_threads` measures both on this machine
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

import argparse
import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone

from elastic import provenance

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


def _time_forwards(model, x, subnet: int, repeats: int) -> float:
    import torch

    with torch.inference_mode():
        for _ in range(3):
            model(x, subnet=subnet)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, subnet=subnet)
            samples.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(samples)


def _in_thread(fn, threads: int | None) -> float:
    out: list[float] = []

    def body():
        if threads is not None:
            configure_worker_threads(threads)
        out.append(fn())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out[0]


def _beside(fn, threads: int, form_team) -> float:
    """`fn()` on the calling thread while a second thread that formed a team of `threads`
    (it ran `form_team()` once) sleeps — the runtime's idle worker; the team ends with it."""
    formed, done = threading.Event(), threading.Event()

    def body():
        configure_worker_threads(threads)
        form_team()
        formed.set()
        done.wait()

    t = threading.Thread(target=body)
    t.start()
    formed.wait()
    try:
        return fn()
    finally:
        done.set()
        t.join()


def measure(subnets=(0, 2), batches=(1, 8), repeats: int = 30, rounds: int = 3) -> dict:
    """Median forward ms of the demo-sized model: main thread vs a second thread with the
    default team vs a second thread that set its own thread count (1 and the main's), and
    the main thread beside an idle second thread whose team has 1 or the main's threads.

    Interleaved: every round measures every setting once, so drift spreads evenly.
    """
    import torch

    from elastic import StitchedNet
    from elastic.anchors import AnchorFamily
    from elastic.demo.pipeline import DemoConfig

    torch.manual_seed(0)
    cfg = DemoConfig.quick()
    model = StitchedNet(AnchorFamily.from_timm(cfg.anchor_specs())).eval()
    main_threads = torch.get_num_threads()

    def on_main(fn, n):
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(main_threads)

    # each setting times `fn` given `form`, a function that forms a team (one forward)
    settings = {
        f"main thread, {main_threads} threads": lambda fn, form: fn(),
        "main thread, 1 thread": lambda fn, form: on_main(fn, 1),
        "worker, default threads": lambda fn, form: _in_thread(fn, None),
        "worker, set_num_threads(1)": lambda fn, form: _in_thread(fn, 1),
        f"worker, set_num_threads({main_threads})": lambda fn, form: _in_thread(fn, main_threads),
        f"main, {main_threads} threads, beside an idle team of 1": lambda fn, form: _beside(fn, 1, form),
        f"main, {main_threads} threads, beside an idle team of {main_threads}": (
            lambda fn, form: _beside(fn, main_threads, form)
        ),
    }
    rows = []
    for subnet in subnets:
        for b in batches:
            x = torch.randn(b, *model.input_size())
            fn = lambda x=x, subnet=subnet: _time_forwards(model, x, subnet, repeats)  # noqa: E731

            def form(x=x, subnet=subnet):
                with torch.inference_mode():
                    model(x, subnet=subnet)

            got: dict[str, list[float]] = {k: [] for k in settings}
            for _ in range(rounds):
                for name, run in settings.items():
                    got[name].append(run(fn, form))
            rows.append({"subnet": subnet, "batch": b, **{k: statistics.median(v) for k, v in got.items()}})
    commit = provenance.commit() or ""
    return {
        "command": "python -m elastic.serving.worker_threads",
        "commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "openmp_cpus": openmp_cpus(),
        "main_threads": main_threads,
        "throttled_with_two_teams": throttles([main_threads, main_threads]),
        "parallel_backend": torch.__config__.parallel_info().splitlines()[-1].strip(),
        "unit": "median ms per forward",
        "rows": rows,
    }


def table(result: dict) -> str:
    """`measure`'s result as markdown: one row per (subnet, batch), one column per setting."""
    rows = result["rows"]
    settings = [k for k in rows[0] if k not in ("subnet", "batch")]
    lines = [
        "| subnet, batch | " + " | ".join(settings) + " |",
        "|---|" + "---|" * len(settings),
        *(f"| {r['subnet']}, {r['batch']} | " + " | ".join(f"{r[k]:.2f}" for k in settings) + " |" for r in rows),
    ]
    return (
        f"# worker threads\n\n{result['unit']}, demo-sized model (random weights); {result['cpus']} CPUs"
        f" ({result['openmp_cpus']} for OpenMP), load average {result['load_average_1min']};"
        f" {result['parallel_backend']}\n\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the JSON here, and its table beside it (.md)")
    args = parser.parse_args()
    result = measure(repeats=args.repeats, rounds=args.rounds)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(table(result))
    print(text)


if __name__ == "__main__":
    main()
