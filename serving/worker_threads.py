"""How the engine's worker thread runs torch, and the measurement behind that choice.

Torch's CPU intra-op parallelism is an OpenMP thread team, one team per OS thread that runs
parallel ops: the main thread's team and the worker's team are separate sets of threads.
Every parallel op ends at a barrier where the team waits for its slowest member, and GNU
OpenMP lets a waiting member busy-spin before it sleeps. With two intra-op threads on a
two-core machine that other processes (and the runtime's own threads: the caller, the
deadline watchdog) also use, a teammate is often not running when the barrier needs it,
and a small forward — dozens of short ops, dozens of barriers — waits for scheduler time
slices at each. That is why a forward of the demo model in the worker was 3-5x slower
than on the main thread (DESIGN.md, "torch from a second Python thread"): not the worker
thread as such, but a two-thread team contending for cores; the measurement here shows
the main thread just as slow (or slower) whenever its own two-thread team is the one
contended, and every one-thread setting fast. `python -m elastic.serving.worker_threads`
measures it on this machine (interleaved; it records the load average).

The engine's choice (`Runtime(worker_threads=...)`): the worker calls
`torch.set_num_threads(n)` on itself before its first forward, with n = the constructing
thread's `torch.get_num_threads()` unless told otherwise — the worker runs with the
threading its caller chose and profiled with (profiles are measured on the worker), and
caller-runs steps (intake.py) run with the caller's own. On a small or shared CPU, choose
one thread (`torch.set_num_threads(1)` before building the runtime, or
`worker_threads=1`): see docs/serving.md for the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import threading
import time
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


def measure(subnets=(0, 2), batches=(1, 8), repeats: int = 30, rounds: int = 3) -> dict:
    """Median forward ms of the demo-sized model: main thread vs a second thread with the
    default team vs a second thread that set its own thread count (1 and the main's).

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

    settings = {
        f"main thread, {main_threads} threads": lambda fn: fn(),
        "main thread, 1 thread": lambda fn: on_main(fn, 1),
        "worker, default threads": lambda fn: _in_thread(fn, None),
        "worker, set_num_threads(1)": lambda fn: _in_thread(fn, 1),
        f"worker, set_num_threads({main_threads})": lambda fn: _in_thread(fn, main_threads),
    }
    rows = []
    for subnet in subnets:
        for b in batches:
            x = torch.randn(b, *model.input_size())
            fn = lambda x=x, subnet=subnet: _time_forwards(model, x, subnet, repeats)  # noqa: E731
            got: dict[str, list[float]] = {k: [] for k in settings}
            for _ in range(rounds):
                for name, run in settings.items():
                    got[name].append(run(fn))
            rows.append({"subnet": subnet, "batch": b, **{k: statistics.median(v) for k, v in got.items()}})
    commit = provenance.commit() or ""
    return {
        "command": "python -m elastic.serving.worker_threads",
        "commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "main_threads": main_threads,
        "parallel_backend": torch.__config__.parallel_info().splitlines()[-1].strip(),
        "unit": "median ms per forward",
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    result = measure(repeats=args.repeats, rounds=args.rounds)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
