"""lanes: one lane against two — `Runtime(lanes=2)` on the 2-core machine, real runs.

A forward cannot be interrupted, so on one lane a batch on a slow, accurate subnet holds up
every request that arrives behind it (serving/lanes.py). With two lanes (two engines over
the one set of weights, one per core), requests with budgets under the split go to a fast
lane and the rest to a lane where slow subnets can run. This suite serves the load suite's
DeiT scenario (published accuracies, measured latencies, its own calibration) in the load
suite's middle range (2× and 3× the largest anchor's served capacity, Poisson and on/off),
with `elastic` and the smallest anchor served statically — the real oracle at these points
in every load-suite run so far — each on one lane and on two. Seeds interleave the four
contenders; each point reports the mean over seeds with a 95 % t-interval, and the paired
difference of elastic on two lanes against the best of the four others.

The load suite itself, and its targets, stay on one lane: its oracle is every front subnet
served statically on the same runtime configuration as `elastic`.
"""

from __future__ import annotations

import argparse
import logging
import statistics

from .harness import markdown_table, write_results
from .load import FULL, QUICK, Span, run_one, warmed_workload
from .load_calibration import BATCH_WAIT_MS, MAX_BATCH, calibrate
from .scenarios import deit_scenario
from .stats import mean_interval, paired_difference, pooled_attainment

log = logging.getLogger(__name__)
LOADS = (2.0, 3.0)
PATTERNS = ("poisson", "on_off")


def run(args: argparse.Namespace) -> dict:
    plan = QUICK if args.quick else FULL
    seeds = 2 if args.quick else 5
    span: Span = plan.span
    scenario = deit_scenario(front_size=plan.deit_front, profile_repeats=5 if args.quick else 8)
    calib = calibrate(scenario)
    smallest = f"static:{calib.smallest}"
    contenders = [("elastic", 1), ("elastic", 2), (smallest, 1), (smallest, 2)]
    points = []
    for pattern in PATTERNS if not args.quick else PATTERNS[:1]:
        for load in LOADS:
            rate = load * calib.capacity_per_s
            scores: dict[str, list[dict]] = {f"{p} × {n}": [] for p, n in contenders}
            for r in range(seeds):
                key = f"lanes/deit/{pattern}/{load}/{r}"
                arrivals, budgets, first = warmed_workload(
                    pattern, rate, plan.warmup.seconds(rate), span.seconds(rate), calib.budgets, key
                )
                order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
                for policy, lanes in order:
                    s = run_one("real", scenario, calib, policy, arrivals, budgets, key, lanes=lanes, scored_from=first)
                    scores[f"{policy} × {lanes}"].append(s)
                    log.info("%s %.2gx seed %d %s × %d: %.3f", pattern, load, r, policy, lanes, s["effective_accuracy"])
            acc = {name: [s["effective_accuracy"] for s in ss] for name, ss in scores.items()}
            best = max((n for n in acc if n != "elastic × 2"), key=lambda n: statistics.fmean(acc[n]))
            points.append(
                {
                    "pattern": pattern,
                    "load": load,
                    "contenders": {
                        name: {
                            "effective_accuracy": mean_interval(acc[name]).to_dict(),
                            "admitted_slo_attainment": pooled_attainment(ss),
                            "rejected_share": statistics.fmean(s["rejected_share"] for s in ss),
                            "per_seed": acc[name],
                        }
                        for name, ss in scores.items()
                    },
                    "best_other": best,
                    "two_lanes_minus_best_other": paired_difference(acc["elastic × 2"], acc[best]).to_dict(),
                }
            )
    rows = []
    for p in points:
        for name, c in p["contenders"].items():
            e = c["effective_accuracy"]
            rows.append(
                [
                    p["pattern"],
                    p["load"],
                    name,
                    f"{e['mean']:.3f} ± {e['half_width']:.3f}",
                    f"{c['admitted_slo_attainment']:.3f}",
                    f"{100 * c['rejected_share']:.1f}",
                ]
            )
    table = markdown_table(
        ["pattern", "load ×", "contender × lanes", "eff. acc", "admitted SLO (pooled)", "rejected %"], rows
    )
    diffs = markdown_table(
        ["pattern", "load ×", "best of the others", "elastic × 2 − it (95 % CI)"],
        [
            [
                p["pattern"],
                p["load"],
                p["best_other"],
                "{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]".format(**p["two_lanes_minus_best_other"]),
            ]
            for p in points
        ],
    )
    head = (
        f"DeiT scenario, real runs: capacity (1×) {calib.capacity_per_s:.1f} req/s (largest anchor served, one lane);"
        f" budgets {calib.budgets.describe()}; {seeds} seeds; max batch {MAX_BATCH}, batch wait {BATCH_WAIT_MS} ms;"
        f" each run scored after an unscored warm-up of {plan.warmup.min_s:g}–{plan.warmup.max_s:g} s of its trace"
        " (bench/load.py)."
        " The two-lane runtime splits budgets at four times the fastest candidate's batch-1 service (elastic);"
        " the static subnet's lanes take requests least loaded first.\n\n"
    )
    table = head + table + "\n\n" + diffs
    method = {
        "loads": list(LOADS),
        "patterns": list(PATTERNS),
        "seeds": seeds,
        "span": vars(span),
        "warmup": vars(plan.warmup),
    }
    write_results(args.out, "lanes", {"method": method, "points": points}, table, args.command)
    return {"points": points, "table": table}
