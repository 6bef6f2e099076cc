"""margin: the planning quantile held fixed against following the SLO, simulated on the load suite's calibration.

Every batch is planned at a quantile of the forwards' recent spread (`LatencyPredictor`).
By default that quantile follows the share of admitted requests that end late, aiming at
half of what `slo_target` (0.99) allows (`TailQuantile`, serving/slo_margin.py); with
`slo_target=None` it stays at 0.95, the value it starts from. This suite measures what the
feedback buys: `elastic` both ways, at loads around the middle range, on the same seeds.

It reads the load suite's results (`<out>/load.json`), each scenario's calibration, and
simulates (`bench/simulate.py`: the real scheduler on a virtual clock, forwards drawn around
the profile) runs of `REQUESTS` requests: the feedback needs thousands of endings to see
a late share of half a percent, so the runs are longer than the load suite's. Reported per
point: the expected effective accuracy (mean and 95 % interval over seeds), the share of
admitted requests answered within budget, the rejected share, the planning quantile at
the end of the run, and the paired difference of effective accuracy against the fixed
quantile. Simulated only: no real forwards.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from tqdm.auto import tqdm

from elastic.serving.predictor import TAIL_QUANTILE

from .calibrated import from_calibration, read_load_run
from .harness import markdown_table, write_results
from .headroom import accuracy_of
from .load import workload
from .load_calibration import BATCH_WAIT_MS, MAX_BATCH
from .outcomes import BernoulliJudge
from .simulate import simulate
from .stats import mean_interval, paired_difference

log = logging.getLogger(__name__)
LOADS = {"poisson": (1.5, 2.0, 3.0), "on_off": (1.5,)}
CONTENDERS = {"fixed quantile": None, "SLO feedback (0.99)": 0.99}  # name -> slo_target
REQUESTS = 8000  # per simulated run, about (the duration follows from the rate)
QUICK_REQUESTS = 1500  # with --quick
MIN_SECONDS = 10.0  # shortest simulated run: ten on/off periods, whatever the rate


def run(args: argparse.Namespace) -> dict:
    source, load, names = read_load_run(args)
    seeds = 2 if args.quick else 3
    requests = QUICK_REQUESTS if args.quick else REQUESTS
    scenarios = {
        name: sweep(
            load["scenarios"][name],
            accuracy_of(name, load["scenarios"][name]["calibration"], args.model),
            seeds,
            requests,
        )
        for name in names
    }
    table = tables(scenarios, load, requests)
    write_results(
        args.out,
        "margin",
        {
            "source": {"file": str(source), "commit": load["commit"], "date": load["date"]},
            "contenders": CONTENDERS,
            "start_quantile": TAIL_QUANTILE,
            "seeds": seeds,
            "requests_per_run": requests,
            "scenarios": scenarios,
        },
        table,
        args.command,
    )
    return {"scenarios": scenarios, "table": table}


def sweep(sc: dict[str, Any], accuracy: dict[int, float], seeds: int, requests: int) -> dict[str, Any]:
    """Every (pattern, load) point of one scenario, `elastic` with each planning margin."""
    scenario = from_calibration(sc, accuracy)
    calib, acc = scenario.calibration, scenario.accuracy
    points = []
    bar = tqdm(
        total=sum(map(len, LOADS.values())) * seeds,
        desc=f"margin, {sc['label'].split(' ')[0]}",
        unit="seed",
        leave=False,
    )
    for pattern, loads in LOADS.items():
        for load in loads:
            runs: dict[str, list[tuple[float, float, float, float]]] = {c: [] for c in CONTENDERS}
            for k in range(seeds):
                seed = f"margin/{pattern}/{load}/{k}"
                rate = load * calib["capacity_per_s"]
                arrivals, budget = workload(pattern, rate, max(requests / rate, MIN_SECONDS), scenario.budgets, seed)
                for name, slo in CONTENDERS.items():
                    final: list[float] = []
                    outcomes = simulate(
                        scenario.subnets,
                        scenario.service,
                        "elastic",
                        arrivals,
                        budget,
                        BernoulliJudge(acc, seed),
                        max_batch_size=MAX_BATCH,
                        batch_wait_ms=BATCH_WAIT_MS,
                        seed=seed,
                        slo_target=slo,
                        on_end=lambda sched, final=final: final.append(sched.latency.forward.tail_quantile),
                    )
                    n = len(outcomes)
                    admitted = [o for o in outcomes if o.status != "rejected"]
                    runs[name].append(
                        (
                            sum(acc[o.subnet] for o in outcomes if o.on_time) / n,
                            sum(o.on_time for o in admitted) / len(admitted) if admitted else 1.0,
                            (n - len(admitted)) / n,
                            final[0],
                        )
                    )
                bar.update()
            base = [v[0] for v in runs["fixed quantile"]]
            points.append(
                {
                    "pattern": pattern,
                    "load": load,
                    "contenders": {
                        name: {
                            "expected_accuracy": mean_interval([v[0] for v in values]).to_dict(),
                            "admitted_in_budget": mean_interval([v[1] for v in values]).to_dict(),
                            "rejected_share": mean_interval([v[2] for v in values]).to_dict(),
                            "final_quantile": [v[3] for v in values],
                            "minus_fixed": paired_difference([v[0] for v in values], base).to_dict(),
                        }
                        for name, values in runs.items()
                    },
                }
            )
    bar.close()
    return {"label": sc["label"], "middle_range": calib["middle_range"], "points": points}


def tables(scenarios: dict[str, dict[str, Any]], load: dict[str, Any], requests: int) -> str:
    out = [
        f"Simulated on the calibration of the load suite's run of commit {load['commit']} ({load['date']}), "
        f"runs of about {requests} requests: expected effective accuracy (mean ± 95 % t-interval over seeds), "
        "admitted requests answered within budget, rejected share, the planning quantile at the end of each "
        f"run (both start at {TAIL_QUANTILE}), and the paired difference against the fixed quantile, in points."
    ]
    for name, sc in scenarios.items():
        lo, hi = sc["middle_range"]
        out.append(f"\n## {name} — {sc['label']}\n\nMiddle range: {lo:g}× < load ≤ {hi:.3g}×.\n")
        rows = []
        for p in sc["points"]:
            for contender, c in p["contenders"].items():
                e, a, r, d = c["expected_accuracy"], c["admitted_in_budget"], c["rejected_share"], c["minus_fixed"]
                rows.append(
                    [
                        p["pattern"],
                        p["load"],
                        contender,
                        f"{e['mean']:.3f} ± {e['half_width']:.3f}",
                        f"{100 * a['mean']:.2f} %",
                        f"{100 * r['mean']:.1f} %",
                        ", ".join(f"{q:.3f}" for q in c["final_quantile"]),
                        "–"
                        if contender == "fixed quantile"
                        else f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]",
                    ]
                )
        out.append(
            markdown_table(
                [
                    "pattern",
                    "load ×",
                    "contender",
                    "expected acc.",
                    "admitted in budget",
                    "rejected",
                    "final quantile (per seed)",
                    "− fixed (points, 95 % CI)",
                ],
                rows,
            )
        )
    return "\n".join(out)
