"""pricing: the elastic policy's busy-period price, swept in simulation on the load suite's calibration.

The elastic policy charges a batch for the tight arrivals its busy period turns away, each
weighted by `blocking_price` (default 1) times the fastest subnet's accuracy
(`ElasticPolicy`, docs/serving.md, "The price of a busy period"). When batches pause at
block boundaries (`Runtime(preempt=True)`) an arrival the batch would make late waits for
one stage of it if the urgent path admits it and for all of it if not, and the charge
counts the expected share (`block_fraction`). Whether another weight would serve better,
with and without pausing, is what this suite measures: the evidence for the default.

It reads the load suite's results (`<out>/load.json`): each scenario's calibration —
profile medians and p99s, the runtime's fitted per-request / per-batch cost, the budgets,
the capacity, the subnets' accuracies — and simulates (`bench/simulate.py`: the real
scheduler on a virtual clock, forwards drawn around the profile) `elastic` at each price of
`PRICES`, and the oracle best static's usual winner (the smallest anchor), at loads around
the middle range, Poisson and on/off, with batches that never pause and with batches that
pause at the scenario model's block boundaries (`stage_fractions`). Every contender runs
on the same seeds (arrivals, budgets, forward and correctness draws). Reported per point:
mean effective accuracy (the expected accuracy of on-time answers per request, no Bernoulli
noise) with its 95 % interval over seeds, the rejected share, and each price's paired
difference against price 1. Simulated only: no real forwards.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from elastic.serving.elastic_policy import ElasticPolicy

from . import policy_variants
from .calibrated import read_load_run
from .harness import markdown_table, write_results
from .headroom import accuracy_of

log = logging.getLogger(__name__)
PRICES = (1.0, 2.0, 3.0, 5.0)
LOADS = {"poisson": (1.0, 1.5, 2.0, 3.0), "on_off": (1.0, 1.5, 2.0)}
REQUESTS = 3000  # per simulated run, about (the duration follows from the rate)
QUICK_REQUESTS = 1000  # with --quick
MIN_SECONDS = 10.0  # shortest simulated run: ten on/off periods, whatever the rate


def run(args: argparse.Namespace) -> dict:
    source, load, names = read_load_run(args)
    seeds = 2 if args.quick else 3
    requests = QUICK_REQUESTS if args.quick else REQUESTS
    scenarios = {}
    for name in names:
        sc = load["scenarios"][name]
        stages = stage_fractions(name, args.model)
        scenarios[name] = sweep(sc, accuracy_of(name, sc["calibration"], args.model), stages, seeds, requests)
    table = tables(scenarios, load)
    write_results(
        args.out,
        "pricing",
        {
            "source": {"file": str(source), "commit": load["commit"], "date": load["date"]},
            "prices": list(PRICES),
            "seeds": seeds,
            "requests_per_run": requests,
            "scenarios": scenarios,
        },
        table,
        args.command,
    )
    return {"scenarios": scenarios, "table": table}


def stage_fractions(name: str, model_dir: str | None) -> dict[int, tuple[float, ...]]:
    """Where each subnet of the scenario's model can pause (`ElasticModel.stage_fractions`)."""
    from .models import demo_model_or_architecture
    from .scenarios import deit_scenario

    # the stages follow from the architecture: without a saved demo model, its random-weight twin
    model = deit_scenario(profile_repeats=1).model if name == "deit" else demo_model_or_architecture(model_dir)[0]
    return {s.id: tuple(model.stage_fractions(s.id)) for s in model.subnets()}


def sweep(
    sc: dict[str, Any], accuracy: dict[int, float], stages: dict[int, tuple[float, ...]], seeds: int, requests: int
) -> dict[str, Any]:
    """Every (pausing?, pattern, load) point of one scenario: each price and the smallest anchor."""
    smallest = sc["calibration"]["smallest_anchor"]
    variants: dict[str, dict[str, Any]] = {
        f"elastic, price {p:g}": {"policy": ElasticPolicy(blocking_price=p)} for p in PRICES
    }
    variants[f"static smallest ({smallest})"] = {"policy": f"static:{smallest}"}
    points = []
    for pausing in (False, True):
        swept = policy_variants.sweep(
            "pricing",
            sc,
            accuracy,
            variants,
            LOADS,
            seeds,
            requests,
            MIN_SECONDS,
            diff_key="minus_price_1",
            stages=stages if pausing else None,
        )
        points += [{"pausing": pausing, **p} for p in swept["points"]]
    return {"label": sc["label"], "middle_range": sc["calibration"]["middle_range"], "points": points}


def tables(scenarios: dict[str, dict[str, Any]], load: dict[str, Any]) -> str:
    out = [
        f"Simulated on the calibration of the load suite's run of commit {load['commit']} ({load['date']}): "
        "expected effective accuracy (mean ± 95 % t-interval over seeds), rejected share, and the paired "
        "difference against price 1, in points."
    ]
    for name, sc in scenarios.items():
        lo, hi = sc["middle_range"]
        out.append(f"\n## {name} — {sc['label']}\n\nMiddle range: {lo:g}× < load ≤ {hi:.3g}×.\n")
        rows = []
        for p in sc["points"]:
            for contender, c in p["contenders"].items():
                e, r, d = c["expected_accuracy"], c["rejected_share"], c["minus_price_1"]
                rows.append(
                    [
                        "pause" if p["pausing"] else "never",
                        p["pattern"],
                        p["load"],
                        contender,
                        f"{e['mean']:.3f} ± {e['half_width']:.3f}",
                        f"{100 * r['mean']:.1f} %",
                        "–"
                        if contender.endswith("price 1")
                        else f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]",
                    ]
                )
        out.append(
            markdown_table(
                [
                    "batches",
                    "pattern",
                    "load ×",
                    "contender",
                    "expected acc.",
                    "rejected",
                    "− price 1 (points, 95 % CI)",
                ],
                rows,
            )
        )
    return "\n".join(out)
