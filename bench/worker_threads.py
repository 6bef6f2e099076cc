"""worker_threads: torch forwards on the main thread and in a second thread, per OpenMP setting.

The measurement behind the engine's worker threading (`elastic.serving.worker_threads` has
the cause: GNU OpenMP throttles its barrier spin once the process holds more OpenMP threads
than CPUs). Median forward ms of a demo-sized model (random weights), per (subnet, batch):
on the main thread with its own team and with one thread; in a second thread with torch's
default, one and the main's thread count; and on the main thread beside an idle second
thread whose team has one or the main's threads. Every round measures every setting once,
so drift spreads evenly; the load average is recorded. Not a suite of `elastic bench`: run
it as `python -m elastic.bench.worker_threads --out docs/serving-worker-threads.json`
(docs/serving.md, "Worker threading", renders the table it writes beside the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from datetime import datetime, timezone

from elastic import provenance
from elastic.serving.worker_threads import configure_worker_threads, openmp_cpus, throttles


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
        "command": "python -m elastic.bench.worker_threads",
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
