"""scheduler: decision time per request for 10 / 100 / 1000 subnets.

A synthetic cost table with every subnet on the accuracy/latency front (the worst case:
none is pruned), requests with random budgets arriving into a queue kept at a given depth;
per request, the time of `add_request` (queue-aware admission) plus its share of
`schedule` (shedding, then picking subnet and batch), per policy. A rejection is a decision
too and is timed the same way. Requests arrive while the last batch runs, as under real
load, so the elastic policy prices busy periods (`serving/demand.py`): the costlier path,
which a loop that finished each batch before the next arrival never took. Pure Python, no
model.

The elastic policy's inner searches run compiled when `elastic.serving._front_search` is
built (serving/front_search.py; the `build` column); one more row per queue depth at 100
subnets runs the same decisions in Python (`pure_python`), so the compiled module's share
is a ratio from the same run. Targets are judged on the default build.

Each configuration runs `ROUNDS` times, the rounds interleaved; the median round is
reported with a distribution-free 95 % interval of the median (`stats.median_interval`: the
8th and 18th of 25 rounds; `--quick`: the 2nd and 8th of 9), and all rounds are in the JSON.
A slow stretch of the shared machine slows every configuration of the rounds it spans: in
aefc9ce's full run two of nine rounds were, and with nine rounds the interval's upper end is
the second slowest, so the 100-subnet row read "within noise" (16.2 µs, 15.9 to 23.9) with
seven of nine rounds at 15.5–20.4. Pure Python on a shared CPU swings
by more than the gap to a target from round to round, so each target is judged on the
interval, as `elastic bench overhead` judges its rows: pass when the whole interval meets
it, FAIL when none of it does, "within noise" otherwise. Targets (issue 9), for the elastic
policy: <= 20 µs per decision at 100 subnets and <= 50 µs at 1000, at every queue depth
measured.
"""

from __future__ import annotations

import argparse
import random
import time

from elastic.errors import BudgetInfeasible, Overloaded
from elastic.serving import BudgetScheduler, LatencyProfile, Request, front_search
from elastic.subnet import Subnet

from .harness import markdown_table, write_results
from .stats import median_interval, verdict

BATCHES = (1, 2, 4, 8)
TARGET_US = {100: 20.0, 1000: 50.0}  # subnets -> most µs per decision (elastic)
ROUNDS = 25  # interleaved repeats of every configuration: an interval that a few slow rounds do not set
QUICK_ROUNDS = 9  # `--quick`: the fewest whose median interval drops both extremes


def synthetic(n: int) -> tuple[list[Subnet], LatencyProfile]:
    """`n` subnets from 1 to 20 ms at batch 1, accuracy rising with latency."""
    subnets, table = [], {}
    for i in range(n):
        ms = 1.0 + 19.0 * i / max(1, n - 1)
        table[i] = {b: ms * (0.6 + 0.4 * b) for b in BATCHES}
        subnets.append(Subnet(i, "stitch", f"s{i}", flops=i + 1, params=1, accuracy=0.5 + 0.4 * i / max(1, n - 1)))
    return subnets, LatencyProfile.from_table(table)


def build() -> str:
    """ "compiled" when the scheduler's searches run in `elastic.serving._front_search`, else "python"."""
    return "compiled" if front_search.native is not None else "python"


def decision_time(n: int, policy: str, depth: int, requests: int, seed: int = 0, python: bool = False) -> dict:
    """Time `requests` admissions and schedule steps with about `depth` requests queued.

    Args:
        python: run the searches in Python even where the compiled module is built.

    Returns:
        subnets, candidates, policy, build, queue_depth, requests, admitted, rejected,
        batches, admit_us (per request), schedule_us (per `schedule` call) and decision_us
        (admission plus schedule time, per request).
    """
    if python:
        with front_search.pure_python():
            return decision_time(n, policy, depth, requests, seed)
    subnets, profile = synthetic(n)
    sched = BudgetScheduler(subnets, profile, policy, max_batch_size=8, max_queue=10_000)
    rng = random.Random(seed)
    now, admit, decide = 0.0, 0.0, 0.0
    calls = rejected = batches = 0
    running = None  # the last batch: it runs while the next requests arrive, as under real load
    for k in range(requests + depth):
        r = Request(k, now, rng.uniform(30.0, 300.0))
        t0 = time.perf_counter()
        try:
            sched.add_request(r, now)
        except (BudgetInfeasible, Overloaded):
            rejected += 1
        t1 = time.perf_counter()
        if k >= depth:  # the first `depth` requests only fill the queue
            admit += t1 - t0
        if k < depth or sched.get_num_waiting() < depth:
            continue
        if running is not None:  # it ends now: the worker asks for the next batch
            sched.update_from_output(running, profile.latency_ms(running.subnet, running.size, "p50"), now)
            running = None
        t0 = time.perf_counter()
        out = sched.schedule(now)
        decide += time.perf_counter() - t0
        calls += 1
        if out.batch is not None:
            batches += 1
            running = out.batch
        now += 0.0005
    return {
        "subnets": n,
        "candidates": len(sched.candidates),
        "policy": policy,
        "build": build(),
        "queue_depth": depth,
        "requests": requests,
        "rejected": rejected,
        "batches": batches,
        "admit_us": 1e6 * admit / requests,
        "schedule_us": 1e6 * decide / calls if calls else 0.0,
        "decision_us": 1e6 * (admit + decide) / requests,
    }


def targets(rows: list[dict]) -> list[dict]:
    """The decision-time targets, one entry per (subnets, depth) of elastic: judged on the
    row's interval over rounds (`decision_us_ci95`, `verdict`), on its value when it has none."""
    checks = []
    for r in rows:
        if r["policy"] != "elastic" or r["subnets"] not in TARGET_US or r.get("python"):
            continue
        target = TARGET_US[r["subnets"]]
        lo, hi = r.get("decision_us_ci95") or (r["decision_us"], r["decision_us"])
        judged = verdict(lo, hi, target)
        checks.append(
            {
                "subnets": r["subnets"],
                "queue_depth": r["queue_depth"],
                "decision_us": r["decision_us"],
                "decision_us_ci95": [lo, hi],
                "target_us": target,
                "verdict": judged,
                "pass": judged == "pass",
            }
        )
    return checks


def run(args: argparse.Namespace) -> dict:
    requests = 300 if args.quick else 2000
    configs = [
        (n, policy, depth, False) for n in (10, 100, 1000) for policy in ("elastic", "slackfit") for depth in (8, 64)
    ]
    if front_search.native is not None:  # the same decisions in Python, beside the compiled rows
        configs[6:6] = [(100, "elastic", depth, True) for depth in (8, 64)]
    # every configuration once per round, rounds interleaved; the row of the median round is kept
    rounds: dict[tuple, list[dict]] = {c: [] for c in configs}
    for r in range(QUICK_ROUNDS if args.quick else ROUNDS):
        for n, policy, depth, python in configs:
            rounds[(n, policy, depth, python)].append(
                decision_time(n, policy, depth, requests, seed=args.seed + r, python=python)
            )
    rows = []
    for c in configs:
        ordered = sorted(rounds[c], key=lambda row: row["decision_us"])
        row = dict(ordered[len(ordered) // 2], python=c[3])
        row["decision_us_rounds"] = [x["decision_us"] for x in rounds[c]]
        row["decision_us_ci95"] = list(median_interval(row["decision_us_rounds"])[1:])
        rows.append(row)
    # the compiled module's share: per round, compiled over Python time, as a median and interval
    for depth in (8, 64):
        compiled, python = rounds.get((100, "elastic", depth, False)), rounds.get((100, "elastic", depth, True))
        if compiled and python:
            ratios = [a["decision_us"] / b["decision_us"] for a, b in zip(compiled, python, strict=True)]
            mid, lo, hi = median_interval(ratios)
            for row in rows:
                if (row["subnets"], row["policy"], row["queue_depth"], row["python"]) == (100, "elastic", depth, False):
                    row["over_python"], row["over_python_ci95"] = mid, [lo, hi]
    checks = targets(rows)
    table = markdown_table(
        [
            "subnets",
            "candidates",
            "policy",
            "build",
            "queue depth",
            "admit µs",
            "schedule µs / call",
            "decision µs / request [95 % interval]",
        ],
        [
            [
                r["subnets"],
                r["candidates"],
                r["policy"],
                r["build"],
                r["queue_depth"],
                r["admit_us"],
                r["schedule_us"],
                f"{r['decision_us']:.3g} [{r['decision_us_ci95'][0]:.3g}, {r['decision_us_ci95'][1]:.3g}]",
            ]
            for r in rows
        ],
    )
    table += "\n\nTargets (elastic), judged on the interval of the median round: " + "; ".join(
        f"{c['subnets']} subnets, depth {c['queue_depth']}: {c['decision_us']:.1f} µs "
        f"[{c['decision_us_ci95'][0]:.1f}, {c['decision_us_ci95'][1]:.1f}] (≤ {c['target_us']:.0f}) {c['verdict']}"
        for c in checks
    )
    shares = [r for r in rows if "over_python" in r]
    if shares:
        table += "\n\nCompiled over Python, per round (100 subnets, elastic; median [95 % interval]): " + "; ".join(
            f"depth {r['queue_depth']}: {r['over_python']:.2f} [{r['over_python_ci95'][0]:.2f}, "
            f"{r['over_python_ci95'][1]:.2f}]"
            for r in shares
        )
    write_results(args.out, "scheduler", {"rows": rows, "targets": checks}, table, args.command)
    return {"rows": rows, "targets": checks, "table": table}
