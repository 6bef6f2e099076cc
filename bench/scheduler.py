"""scheduler: decision time per request for 10 / 100 / 1000 subnets.

A synthetic cost table with every subnet on the accuracy/latency front (the worst case:
none is pruned), requests with random budgets arriving into a queue of a given depth; the
time of `add_request` (admission) and of `schedule` (picking subnet and batch) per request,
per policy. Pure Python, no model.
"""

from __future__ import annotations

import argparse
import random
import time

from elastic.serving import BudgetScheduler, LatencyProfile, Request
from elastic.subnet import Subnet

from .harness import markdown_table, write_results

BATCHES = (1, 2, 4, 8)


def synthetic(n: int) -> tuple[list[Subnet], LatencyProfile]:
    """`n` subnets from 1 to 20 ms at batch 1, accuracy rising with latency."""
    subnets, table = [], {}
    for i in range(n):
        ms = 1.0 + 19.0 * i / max(1, n - 1)
        table[i] = {b: ms * (0.6 + 0.4 * b) for b in BATCHES}
        subnets.append(Subnet(i, "stitch", f"s{i}", flops=i + 1, params=1, accuracy=0.5 + 0.4 * i / max(1, n - 1)))
    return subnets, LatencyProfile.from_table(table)


def decision_time(n: int, policy: str, depth: int, requests: int, seed: int = 0) -> dict:
    subnets, profile = synthetic(n)
    sched = BudgetScheduler(subnets, profile, policy, max_batch_size=8, max_queue=10_000)
    rng = random.Random(seed)
    now, admit, decide, decisions = 0.0, 0.0, 0.0, 0
    for k in range(requests + depth):
        r = Request(k, now, rng.uniform(30.0, 300.0))
        t0 = time.perf_counter()
        sched.add_request(r, now)
        admit += time.perf_counter() - t0
        if k < depth:
            continue  # fill the queue first
        t0 = time.perf_counter()
        out = sched.schedule(now)
        decide += time.perf_counter() - t0
        decisions += 1
        if out.batch is not None:
            sched.update_from_output(out.batch, profile.latency_ms(out.batch.subnet, out.batch.size, "p50"))
        now += 0.0005
    return {
        "subnets": n,
        "candidates": len(sched.candidates),
        "policy": policy,
        "queue_depth": depth,
        "admit_us": 1e6 * admit / (requests + depth),
        "schedule_us": 1e6 * decide / decisions,
    }


def run(args: argparse.Namespace) -> dict:
    requests = 300 if args.quick else 2000
    rows = [
        decision_time(n, policy, depth, requests)
        for n in (10, 100, 1000)
        for policy in ("elastic", "slackfit")
        for depth in (8, 64)
    ]
    table = markdown_table(
        ["subnets", "candidates", "policy", "queue depth", "admit µs", "schedule µs"],
        [[r["subnets"], r["candidates"], r["policy"], r["queue_depth"], r["admit_us"], r["schedule_us"]] for r in rows],
    )
    write_results(args.out, "scheduler", {"rows": rows}, table, args.command)
    return {"rows": rows, "table": table}
