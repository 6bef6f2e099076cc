"""switch_interval: the interpreter's switch interval under real load — CPython's 5 ms against 20 µs.

An eager forward hands the interpreter lock back at every operator and waits to retake it;
the switch interval is how long it may wait while another thread runs Python before that
thread is asked to let go (`elastic bench contention` measures a forward beside a busy
thread). Under load the other thread is the one that submits. This suite serves the load
suite's demo scenario (its own calibration, real predictions) at points where the demo
misses its targets in bursts and where it holds them under Poisson load, with `elastic` and
the smallest anchor served statically, each with the interval left at the interpreter's
default and set to `SHORT_S` around the run (`sys.setswitchinterval`, restored after).
Seeds interleave the four contenders; each point reports the mean over seeds with a 95 %
t-interval, admitted requests in budget and shed (pooled over seeds), the forwards' median
and the submitting thread's lag, and the paired difference of 20 µs against the default.

The setting is process-wide, so the runtime leaves it to the application; the load suite
runs at the default.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys

from .contention import switch_interval
from .harness import markdown_table, write_results
from .load import FULL, QUICK, run_one, warmed_workload
from .load_calibration import calibrate
from .scenarios import demo_scenario
from .stats import mean_interval, paired_difference, pooled_attainment

log = logging.getLogger(__name__)
SHORT_S = 20e-6  # the shortened interval
POINTS = (("poisson", 1.0), ("poisson", 2.0), ("on_off", 1.0), ("on_off", 2.0))
QUICK_POINTS = (("on_off", 1.0),)


def run(args: argparse.Namespace) -> dict:
    plan = QUICK if args.quick else FULL
    seeds = 2 if args.quick else 5
    scenario = demo_scenario(args.model, profile_repeats=10 if args.quick else 30)
    try:
        calib = calibrate(scenario)
        default_s = sys.getswitchinterval()
        policies = ("elastic", f"static:{calib.smallest}")
        contenders = [(p, s) for p in policies for s in (None, SHORT_S)]  # None: the interpreter's default
        points = [
            _point(scenario, calib, plan, pattern, load, seeds, contenders)
            for pattern, load in (QUICK_POINTS if args.quick else POINTS)
        ]
    finally:
        scenario.close()
    table = _table(points, calib, seeds, default_s)
    method = {
        "points": [list(p) for p in POINTS],
        "seeds": seeds,
        "default_s": default_s,
        "short_s": SHORT_S,
        "span": vars(plan.span),
        "warmup": vars(plan.warmup),
    }
    write_results(args.out, "switch_interval", {"method": method, "points": points}, table, args.command)
    return {"points": points, "table": table}


def _name(policy: str, switch: float | None) -> str:
    return f"{policy} @ {'20 µs' if switch is not None else 'default'}"


def _point(scenario, calib, plan, pattern: str, load: float, seeds: int, contenders) -> dict:
    """One (pattern, load): every contender on every seed, in rotating order."""
    rate = load * calib.capacity_per_s
    runs: dict[str, list[dict]] = {_name(p, s): [] for p, s in contenders}
    for r in range(seeds):
        key = f"switch_interval/demo/{pattern}/{load}/{r}"
        arrivals, budgets, first = warmed_workload(
            pattern, rate, plan.warmup.seconds(rate), plan.span.seconds(rate), calib.budgets, key
        )
        for policy, switch in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
            with switch_interval(switch):
                s = run_one("real", scenario, calib, policy, arrivals, budgets, key, scored_from=first)
            runs[_name(policy, switch)].append(s)
            log.info("%s %.2gx seed %d %s: %.3f", pattern, load, r, _name(policy, switch), s["effective_accuracy"])
    contenders_out = {}
    for name, ss in runs.items():
        admitted = sum(s["admitted"] for s in ss)
        contenders_out[name] = {
            "effective_accuracy": mean_interval([s["effective_accuracy"] for s in ss]).to_dict(),
            "admitted_slo_attainment": pooled_attainment(ss),
            "shed_share": sum(s["shed"] for s in ss) / admitted if admitted else 0.0,
            "rejected_share": statistics.fmean(s["rejected_share"] for s in ss),
            "forward_ms_p50": _median([s["forward_ms"]["p50"] for s in ss if s.get("forward_ms")]),
            "submit_lag_ms_p50": _median([s["submit_lag_ms"]["p50"] for s in ss if s.get("submit_lag_ms")]),
            "per_seed": [s["effective_accuracy"] for s in ss],
        }
    gains = {}
    for policy in dict.fromkeys(p for p, _ in contenders):
        short, default = runs[_name(policy, SHORT_S)], runs[_name(policy, None)]
        gains[policy] = {
            "effective_accuracy": paired_difference(
                [s["effective_accuracy"] for s in short], [s["effective_accuracy"] for s in default]
            ).to_dict(),
            "admitted_in_budget": paired_difference(
                [s["admitted_slo_attainment"] or 0.0 for s in short],
                [s["admitted_slo_attainment"] or 0.0 for s in default],
            ).to_dict(),
        }
    return {"pattern": pattern, "load": load, "contenders": contenders_out, "short_minus_default": gains}


def _table(points: list[dict], calib, seeds: int, default_s: float) -> str:
    rows = [
        [
            p["pattern"],
            p["load"],
            name,
            "{mean:.3f} ± {half_width:.3f}".format(**c["effective_accuracy"]),
            f"{100 * c['admitted_slo_attainment']:.1f}",
            f"{100 * c['shed_share']:.1f}",
            f"{100 * c['rejected_share']:.1f}",
            "–" if c["forward_ms_p50"] is None else c["forward_ms_p50"],
            "–" if c["submit_lag_ms_p50"] is None else c["submit_lag_ms_p50"],
        ]
        for p in points
        for name, c in p["contenders"].items()
    ]
    table = markdown_table(
        [
            "pattern",
            "load ×",
            "contender @ switch interval",
            "eff. acc",
            "admitted in budget %",
            "shed % of admitted",
            "rejected %",
            "forward ms (p50)",
            "submit lag ms (p50)",
        ],
        rows,
    )
    diffs = markdown_table(
        [
            "pattern",
            "load ×",
            "contender",
            "eff. acc: 20 µs − default (points, 95 % CI)",
            "admitted in budget: 20 µs − default (points, 95 % CI)",
        ],
        [
            [p["pattern"], p["load"], policy, _points(g["effective_accuracy"]), _points(g["admitted_in_budget"])]
            for p in points
            for policy, g in p["short_minus_default"].items()
        ],
    )
    head = (
        f"Demo scenario, real runs: capacity (1×) {calib.capacity_per_s:.1f} req/s (largest anchor served);"
        f" budgets {calib.budgets.describe()}; {seeds} seeds; the interpreter's default switch interval"
        f" {default_s * 1e3:g} ms against {SHORT_S * 1e6:g} µs; forward and lag: the median over seeds of each"
        " run's median (bench/load.py).\n\n"
    )
    return head + table + "\n\n" + diffs


def _points(d: dict) -> str:
    return f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def _median(values: list[float]) -> float | None:
    """The median, None when no run answered anything (a run that refused every request)."""
    return statistics.median(values) if values else None
