"""ride_along: a loose request left for a later batch, credited or not, simulated on the load suite's calibration.

A batch is a prefix of the queue in deadline order, so a loose-budget request queued behind
a tight one rides in the tight one's batch, on the fast subnet the tight deadline allows,
unless the policy leaves it for a later batch on an accurate subnet. `ElasticPolicy` credits
a request left behind with the most accurate subnet it can still get, capped by the worker's
capacity at the recent arrival rate (`later_utilisation`, default 0.8; docs/serving.md,
"Batching"). This suite measures what the credit buys: `elastic` without it
(`later_utilisation=0`, the rest valued at the fastest subnet's accuracy, as before), with it
capped at 0.6 and at the default, and uncapped (any subnet the deadline allows), on the
same seeds.

It reads the load suite's results (`<out>/load.json`), each scenario's calibration, and
simulates (`bench/simulate.py`) runs of `REQUESTS` requests, batches pausing at block
boundaries as the runtime's do. Reported per point: the expected effective accuracy (mean
and 95 % interval over seeds), the share of admitted requests answered within budget, the
rejected share, and the paired difference of expected accuracy against no credit.
Simulated only: no real forwards.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from tqdm.auto import tqdm

from elastic.serving.elastic_policy import LATER_UTILISATION, ElasticPolicy

from .calibrated import from_calibration, read_load_run
from .harness import markdown_table, write_results
from .headroom import accuracy_of
from .load import workload
from .load_calibration import BATCH_WAIT_MS, MAX_BATCH
from .outcomes import BernoulliJudge
from .pricing import stage_fractions
from .simulate import simulate
from .stats import mean_interval, paired_difference

log = logging.getLogger(__name__)
LOADS = {"poisson": (0.5, 1.0, 1.5, 2.0, 3.0), "on_off": (0.5, 1.0, 1.5, 2.0)}
BASE = "no credit"
CONTENDERS = {  # name -> later_utilisation
    BASE: 0.0,
    "credit, capped (0.6)": 0.6,
    f"credit, capped ({LATER_UTILISATION:g}, the default)": LATER_UTILISATION,
    "credit, uncapped": math.inf,
}
REQUESTS = 3000  # per simulated run, about (the duration follows from the rate)
QUICK_REQUESTS = 800  # with --quick
MIN_SECONDS = 10.0  # shortest simulated run: ten on/off periods, whatever the rate


def run(args: argparse.Namespace) -> dict:
    source, load, names = read_load_run(args)
    seeds = 2 if args.quick else 4
    requests = QUICK_REQUESTS if args.quick else REQUESTS
    scenarios = {}
    for name in names:
        sc = load["scenarios"][name]
        accuracy = accuracy_of(name, sc["calibration"], args.model)
        scenarios[name] = sweep(sc, accuracy, stage_fractions(name, args.model), seeds, requests)
    table = tables(scenarios, load, requests)
    write_results(
        args.out,
        "ride_along",
        {
            "source": {"file": str(source), "commit": load["commit"], "date": load["date"]},
            "contenders": {name: str(u) for name, u in CONTENDERS.items()},
            "seeds": seeds,
            "requests_per_run": requests,
            "scenarios": scenarios,
        },
        table,
        args.command,
    )
    return {"scenarios": scenarios, "table": table}


def sweep(
    sc: dict[str, Any], accuracy: dict[int, float], stages: dict[int, tuple[float, ...]], seeds: int, requests: int
) -> dict[str, Any]:
    """Every (pattern, load) point of one scenario, `elastic` with each credit."""
    scenario = from_calibration(sc, accuracy)
    calib, acc = scenario.calibration, scenario.accuracy
    points = []
    bar = tqdm(
        total=sum(map(len, LOADS.values())) * seeds,
        desc=f"ride_along, {sc['label'].split(' ')[0]}",
        unit="seed",
        leave=False,
    )
    for pattern, loads in LOADS.items():
        for load in loads:
            runs: dict[str, list[tuple[float, float, float]]] = {c: [] for c in CONTENDERS}
            for k in range(seeds):
                seed = f"ride_along/{pattern}/{load}/{k}"
                rate = load * calib["capacity_per_s"]
                arrivals, budget = workload(pattern, rate, max(requests / rate, MIN_SECONDS), scenario.budgets, seed)
                for name, later in CONTENDERS.items():
                    outcomes = simulate(
                        scenario.subnets,
                        scenario.service,
                        ElasticPolicy(later_utilisation=later),
                        arrivals,
                        budget,
                        BernoulliJudge(acc, seed),
                        max_batch_size=MAX_BATCH,
                        batch_wait_ms=BATCH_WAIT_MS,
                        seed=seed,
                        stages=stages,
                    )
                    n = len(outcomes)
                    admitted = [o for o in outcomes if o.status != "rejected"]
                    runs[name].append(
                        (
                            sum(acc[o.subnet] for o in outcomes if o.on_time) / n,
                            sum(o.on_time for o in admitted) / len(admitted) if admitted else 1.0,
                            (n - len(admitted)) / n,
                        )
                    )
                bar.update()
            base = [v[0] for v in runs[BASE]]
            points.append(
                {
                    "pattern": pattern,
                    "load": load,
                    "contenders": {
                        name: {
                            "expected_accuracy": mean_interval([v[0] for v in values]).to_dict(),
                            "admitted_in_budget": mean_interval([v[1] for v in values]).to_dict(),
                            "rejected_share": mean_interval([v[2] for v in values]).to_dict(),
                            "minus_no_credit": paired_difference([v[0] for v in values], base).to_dict(),
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
        f"runs of about {requests} requests, batches pausing at block boundaries: expected effective accuracy "
        "(mean ± 95 % t-interval over seeds), admitted requests answered within budget, rejected share, and the "
        "paired difference against no credit for a request left for a later batch, in points."
    ]
    for name, sc in scenarios.items():
        lo, hi = sc["middle_range"]
        out.append(f"\n## {name} — {sc['label']}\n\nMiddle range: {lo:g}× < load ≤ {hi:.3g}×.\n")
        rows = []
        for p in sc["points"]:
            for contender, c in p["contenders"].items():
                e, a, r, d = c["expected_accuracy"], c["admitted_in_budget"], c["rejected_share"], c["minus_no_credit"]
                diff = f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
                rows.append(
                    [
                        p["pattern"],
                        p["load"],
                        contender,
                        f"{e['mean']:.3f} ± {e['half_width']:.3f}",
                        f"{100 * a['mean']:.2f} %",
                        f"{100 * r['mean']:.1f} %",
                        "–" if contender == BASE else diff,
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
                    "− no credit (points, 95 % CI)",
                ],
                rows,
            )
        )
    return "\n".join(out)
