"""contention: each executor's forward alone, and beside a thread that runs Python.

A serving process runs Python besides the forwards: the threads that submit requests, a web
framework's. An eager forward releases and retakes the interpreter lock at every operator,
so such a thread slows it down; the process executor runs the forward in a child process
(`elastic.serving.process_executor`), where the lock is not shared, and the traced executor
(`elastic.serving.traced_executor`) runs it as one TorchScript call, made without the lock,
which it takes back once at the end; the staged traced executor (`traced_staged`, which
lets a batch pause for urgent requests) makes one such call per stage, so it takes the lock
back at every stage boundary. Here one thread calls each executor (as the engine's
worker does) while a second thread alternates between `busy_ms` of pure Python and
`idle_ms` asleep — the share of time it holds the lock is the condition's duty. Alone and
at each duty, the executors run interleaved, one call per sample; the table gives each
median, the other executors' ratios to eager (paired per round), and how much
each slowed down against running alone.

Beside the busy thread each condition also runs with the interpreter's switch interval
shortened to `SHORT_SWITCH_S` (`sys.setswitchinterval`; CPython's default is 5 ms): how long
a thread that wants the lock back waits before the one holding it is asked to drop it. An
eager forward asks for it back after every operator, so the interval bounds each of those
waits. It is a process-wide setting, the application's to choose: the runtime leaves it alone.

A second measurement puts the runtime's own front door beside the forward: a thread that
submits requests the runtime refuses (budgets below the fastest prediction) at
`REFUSAL_RATE` per second, the demo's arrival rate inside an on/off burst at 1× load — in
such bursts the load suite's runtime refuses most requests — while the worker thread runs
the fastest subnet's eager forward of eight, in blocks alternating with the forward alone.
A refusal that runs a tensor operation lets go of the lock in the middle of its Python, and
each such hand-off costs the forward more than the refusal's own time.

Model: the demo's (`out/demo/model`) when it is there, else its architecture with random
weights; the fastest, a middle and the slowest subnet of its Pareto front.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

import elastic

from .harness import interleaved, markdown_table, paired_ratio, summary, write_results
from .models import demo_model_or_architecture
from .onnx import choose_subnets

log = logging.getLogger(__name__)

CONTENDERS = ("eager", "process", "traced", "traced_staged")
BATCH_SIZES = (1, 8)
DUTIES = (0.0, 0.5, 0.9)  # share of each millisecond the busy thread runs Python
PERIOD_MS = 1.0
SHORT_SWITCH_S = 20e-6  # the shortened switch interval each busy condition also runs with
REFUSAL_RATE = 7000.0  # refused submits per second beside the forward: ~4x the demo's capacity, an on/off burst at 1x
REFUSAL_BLOCKS = 3  # alternating blocks of the forward alone and beside the refusing thread


@contextmanager
def switch_interval(seconds: float | None) -> Iterator[None]:
    """The interpreter's switch interval set to `seconds` inside (None: left as it is)."""
    before = sys.getswitchinterval()
    if seconds is not None:
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class BusyThread:
    """A thread that runs pure Python for `duty` of every `period_ms`, and sleeps the rest.

    Use as a context manager; `spins` counts its busy spells (so a test can see it ran)."""

    def __init__(self, duty: float, period_ms: float = PERIOD_MS):
        if not 0 <= duty < 1:
            raise ValueError(f"duty must be in [0, 1), got {duty}")
        self.busy_s = duty * period_ms / 1e3
        self.idle_s = (1 - duty) * period_ms / 1e3
        self.spins = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-python", daemon=True)

    def _run(self) -> None:
        clock, busy, idle = time.perf_counter, self.busy_s, self.idle_s
        while not self._stop.is_set():
            end = clock() + busy
            while clock() < end:  # Python bytecode: holds the lock but at switch points
                pass
            self.spins += 1
            time.sleep(idle)

    def __enter__(self) -> BusyThread:
        if self.busy_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class RefusingThread:
    """A thread that submits to `runtime` requests it refuses (a budget below any
    prediction), `rate` per second, paced by sleeping; a context manager. `refused` counts
    them, `busy_s` sums the submit calls' own time."""

    def __init__(self, runtime, x: torch.Tensor, rate: float):
        self.runtime, self.x, self.period = runtime, x, 1.0 / rate
        self.refused, self.busy_s, self.elapsed_s = 0, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="refused-submits", daemon=True)

    def _run(self) -> None:
        from elastic.errors import BudgetInfeasible

        clock, submit, x = time.perf_counter, self.runtime.submit, self.x
        start = due = clock()
        while not self._stop.is_set():
            due += self.period
            t0 = clock()
            try:
                submit(x, 1e-6)
            except BudgetInfeasible:
                self.refused += 1
            else:
                raise RuntimeError("a request with a 1 ns budget was admitted")
            now = clock()
            self.busy_s += now - t0
            if due > now:
                time.sleep(due - now)
            else:
                due = now  # behind: go on at once, without a burst to catch up
        self.elapsed_s = clock() - start

    def __enter__(self) -> RefusingThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def beside_refusals(model: elastic.ElasticModel, sid: int, repeats: int, threads: int = 1) -> dict:
    """Subnet `sid`'s eager forward of eight on a worker thread, alone and beside a
    `RefusingThread` at `REFUSAL_RATE`, in `REFUSAL_BLOCKS` alternating blocks of `repeats`
    calls: medians, slowdown, and the refusals' rate and own time."""
    from elastic.serving import Runtime
    from elastic.serving.executor import EagerExecutor

    from .overhead import flat_profile

    executor = EagerExecutor(model)
    x8 = torch.randn(8, *model.input_size(), generator=torch.Generator().manual_seed(sid))
    sample = torch.randn(*model.input_size())

    def block() -> list[float]:
        def timed() -> list[float]:
            out = []
            with torch.inference_mode():
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    executor.run(sid, x8)
                    out.append(time.perf_counter() - t0)
            return out

        return on_worker_thread(timed, threads)

    alone: list[float] = []
    beside: list[float] = []
    refused = busy_s = elapsed_s = 0.0
    with Runtime(model, max_batch_size=8, policy=f"static:{sid}", profile=flat_profile(model, sid)) as rt:
        block()  # warm-up
        for _ in range(REFUSAL_BLOCKS):
            alone += block()
            with RefusingThread(rt, sample, REFUSAL_RATE) as refusing:
                beside += block()
            refused += refusing.refused
            busy_s += refusing.busy_s
            elapsed_s += refusing.elapsed_s
    a, b = summary(alone), summary(beside)
    return {
        "subnet": sid,
        "batch": 8,
        "rate_per_s": REFUSAL_RATE,
        "achieved_per_s": refused / elapsed_s if elapsed_s else 0.0,
        "us_per_refusal": 1e6 * busy_s / refused if refused else None,
        "alone": a,
        "beside": b,
        "slowdown": b["median_ms"] / a["median_ms"],
    }


def on_worker_thread(fn: Callable[[], dict], threads: int) -> dict:
    """Run `fn` on a fresh thread with `threads` torch threads, as the engine's worker runs."""
    out: dict = {}

    def body() -> None:
        torch.set_num_threads(threads)
        out["result"] = fn()

    t = threading.Thread(target=body, name="bench-worker")
    t.start()
    t.join()
    return out["result"]


def compare(
    model: elastic.ElasticModel,
    ids: list[int],
    repeats: int,
    duties=DUTIES,
    threads: int = 1,
    switches: tuple[float | None, ...] = (None, SHORT_SWITCH_S),
) -> tuple[list[dict], dict]:
    """Rows per (subnet, batch, duty, switch interval): alone (duty 0, the interpreter's own
    interval) first, then each busy duty with each of `switches` (None: the interpreter's)."""
    from elastic.serving.executor import EagerExecutor
    from elastic.serving.process_executor import ProcessExecutor
    from elastic.serving.traced_executor import StagedTracedExecutor, TracedExecutor

    t0 = time.perf_counter()
    process = ProcessExecutor(model, threads=threads, rows=max(BATCH_SIZES))
    start_s = time.perf_counter() - t0
    executors = {
        "eager": EagerExecutor(model),
        "process": process,
        "traced": TracedExecutor(model),
        "traced_staged": StagedTracedExecutor(model),
    }
    rows = []
    try:
        for sid in ids:
            for b in BATCH_SIZES:
                x = torch.randn(b, *model.input_size(), generator=torch.Generator().manual_seed(sid * 100 + b))
                with torch.inference_mode():
                    reference = executors["eager"].run(sid, x)
                    diff = {
                        name: float((ex.run(sid, x) - reference).abs().max())
                        for name, ex in executors.items()
                        if name != "eager"
                    }
                calls = {name: (lambda ex=ex, x=x, sid=sid: ex.run(sid, x)) for name, ex in executors.items()}
                by_condition = {}
                for duty in duties:
                    for switch in switches if duty > 0 else (None,):
                        with switch_interval(switch), BusyThread(duty) as busy:
                            times = on_worker_thread(lambda c=calls: interleaved(c, repeats=repeats), threads)
                        if duty > 0 and busy.spins == 0:
                            raise RuntimeError("the busy thread never ran")
                        by_condition[(duty, switch)] = times
                alone = by_condition[(duties[0], None)]
                for (duty, switch), times in by_condition.items():
                    rows.append(
                        {
                            "subnet": sid,
                            "batch": b,
                            "duty": duty,
                            "switch_interval_s": switch if switch is not None else sys.getswitchinterval(),
                            **{name: summary(times[name]) for name in CONTENDERS},
                            "process_vs_eager": paired_ratio(times["process"], times["eager"]),
                            "traced_vs_eager": paired_ratio(times["traced"], times["eager"]),
                            "staged_vs_eager": paired_ratio(times["traced_staged"], times["eager"]),
                            "slowdown": {
                                name: summary(times[name])["median_ms"] / summary(alone[name])["median_ms"]
                                for name in CONTENDERS
                            },
                            "max_abs_diff_vs_eager": diff,
                        }
                    )
                    log.info("subnet %d batch %d duty %.1f switch %s: %s", sid, b, duty, switch, rows[-1]["slowdown"])
    finally:
        process.close()
    return rows, {"process_start_s": start_s}


def run(args: argparse.Namespace) -> dict:
    repeats, most = (15, 2) if args.quick else (40, 3)
    threads = torch.get_num_threads()  # what `elastic bench --threads` set (default 1)
    load_before = os.getloadavg()[0]
    model, name = demo_model_or_architecture(args.model)
    ids = choose_subnets(model, most)
    rows, setup = compare(model, ids, repeats, DUTIES, threads)
    refusals = beside_refusals(model, ids[0], repeats, threads)
    setup["loadavg_1min"] = [load_before, os.getloadavg()[0]]
    table = markdown_table(
        [
            "subnet",
            "batch",
            "busy thread's duty",
            "switch interval",
            "eager ms",
            "process ms",
            "traced ms",
            "staged ms",
            "process/eager",
            "traced/eager",
            "staged/eager",
            "eager slowdown",
            "process slowdown",
            "traced slowdown",
            "staged slowdown",
        ],
        [
            [
                r["subnet"],
                r["batch"],
                f"{round(100 * r['duty'])} %",
                _interval(r["switch_interval_s"]),
                r["eager"]["median_ms"],
                r["process"]["median_ms"],
                r["traced"]["median_ms"],
                r["traced_staged"]["median_ms"],
                r["process_vs_eager"],
                r["traced_vs_eager"],
                r["staged_vs_eager"],
                r["slowdown"]["eager"],
                r["slowdown"]["process"],
                r["slowdown"]["traced"],
                r["slowdown"]["traced_staged"],
            ]
            for r in rows
        ],
    )
    worst = {name: max(r["max_abs_diff_vs_eager"][name] for r in rows) for name in CONTENDERS[1:]}
    table += (
        f"\n\nModel: {name}; subnets {ids}; {threads} torch thread(s), here and in the child; {repeats} interleaved "
        f"rounds of one call, on a worker thread; the busy thread runs Python for the duty's share of every "
        f"{PERIOD_MS:g} ms (0 %: no busy thread), with the interpreter's switch interval (`sys.setswitchinterval`) "
        f"at its default and at {_interval(SHORT_SWITCH_S)}. Slowdown: median against the same executor's alone. "
        f"Largest |process - eager| {worst['process']:.1e}, |traced - eager| {worst['traced']:.1e}, "
        f"|staged - eager| {worst['traced_staged']:.1e} (staged: `traced_staged`, one graph per stage); "
        f"the child took {setup['process_start_s']:.1f} s to start; 1-min load "
        f"average {setup['loadavg_1min'][0]:.1f} -> {setup['loadavg_1min'][1]:.1f} on {os.cpu_count()} CPUs."
        f"\n\nBeside refused submits: subnet {refusals['subnet']}'s eager forward of eight took"
        f" {refusals['alone']['median_ms']:.3g} ms alone and {refusals['beside']['median_ms']:.3g} ms"
        f" ({refusals['slowdown']:.3g}×) beside a thread submitting requests the runtime refuses, aiming at"
        f" {refusals['rate_per_s']:,.0f} per second; it refused {refusals['achieved_per_s']:,.0f} per second,"
        f" each submit taking {refusals['us_per_refusal']:.3g} µs of its time ({REFUSAL_BLOCKS} alternating blocks"
        f" of {repeats} forwards each way, medians)."
    )
    data = {
        "model": name,
        "subnets": ids,
        "threads": threads,
        "repeats": repeats,
        "duties": DUTIES,
        "short_switch_interval_s": SHORT_SWITCH_S,
        "setup": setup,
    }
    write_results(args.out, "contention", {**data, "rows": rows, "refusals": refusals}, table, args.command)
    return {"rows": rows, "refusals": refusals, "table": table}


def _interval(seconds: float) -> str:
    """A switch interval for the table: "5 ms", "20 µs"."""
    return f"{seconds * 1e3:g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:g} µs"
