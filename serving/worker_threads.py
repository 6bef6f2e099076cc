"""How the engine's worker thread runs torch, and the measurement behind that choice.

Torch's CPU intra-op parallelism is an OpenMP thread team. OpenMP keeps its settings
(`nthreads-var`) and its team *per calling thread*: `torch.set_num_threads(n)` on the main
thread sets them for the main thread only, and the first parallel region run from another
Python thread builds a second team sized by the process default (the number of cores).
On a small shared machine that gives two teams of spinning threads (GNU OpenMP lets idle
team members busy-wait before they sleep, `OMP_WAIT_POLICY`/`GOMP_SPINCOUNT`), both
oversubscribing the cores the forward needs; each small op's barrier then waits for a
thread that is not running. The forward of a small model in the worker can so be several
times slower than the same forward on the main thread (DESIGN.md, "torch from a second
Python thread"). `python -m elastic.serving.worker_threads` measures it on this machine.

The engine's choice (`Runtime(worker_threads=...)`): the worker calls
`torch.set_num_threads(n)` on itself before its first forward, with n = the main thread's
`torch.get_num_threads()` at construction unless told otherwise, so the worker runs with
exactly the threading its caller chose and profiled with — never a second default-sized
team. See docs/serving.md for the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import threading
import time
from datetime import datetime, timezone

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
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "command": "python -m elastic.serving.worker_threads",
        "commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "main_threads": main_threads,
        "parallel_backend": torch.__config__.parallel_info().splitlines()[-1].strip(),
        "unit": "median ms per forward",
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(repeats=args.repeats, rounds=args.rounds), indent=2))


if __name__ == "__main__":
    main()
