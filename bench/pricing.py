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
from .harness import markdown_table

log = logging.getLogger(__name__)
PRICES = (1.0, 2.0, 3.0, 5.0)
LOADS = {"poisson": (1.0, 1.5, 2.0, 3.0), "on_off": (1.0, 1.5, 2.0)}
REQUESTS = 3000  # per simulated run, about (the duration follows from the rate)
QUICK_REQUESTS = 1000  # with --quick
MIN_SECONDS = 10.0  # shortest simulated run: ten on/off periods, whatever the rate


def run(args: argparse.Namespace) -> dict:
    return policy_variants.variant_suite(
        args,
        "pricing",
        {f"elastic, price {p:g}": {"policy": ElasticPolicy(blocking_price=p)} for p in PRICES},
        LOADS,
        seeds=(3, 2),
        requests=(REQUESTS, QUICK_REQUESTS),
        min_seconds=MIN_SECONDS,
        stages=stage_fractions,
        diff_key="minus_price_1",
        diff_label="− price 1 (points, 95 % CI)",
        note=lambda load, requests: (
            f"Simulated on the calibration of the load suite's run of commit {load['commit']} ({load['date']}): "
            "expected effective accuracy (mean ± 95 % t-interval over seeds), rejected share, and the paired "
            "difference against price 1, in points."
        ),
        extra={"prices": list(PRICES)},
        sweeper=sweep,
        tabulate=tables,
    )


def stage_fractions(name: str, model_dir: str | None) -> dict[int, tuple[float, ...]]:
    """Where each subnet of the scenario's model can pause (`ElasticModel.stage_fractions`)."""
    from .models import demo_model_or_architecture
    from .scenarios import deit_scenario

    # the stages follow from the architecture: without a saved demo model, its random-weight twin
    model = deit_scenario(profile_repeats=1).model if name == "deit" else demo_model_or_architecture(model_dir)[0]
    return {s.id: tuple(model.stage_fractions(s.id)) for s in model.subnets()}


def sweep(
    suite: str,
    sc: dict[str, Any],
    accuracy: dict[int, float],
    variants: dict[str, dict[str, Any]],
    loads: dict[str, tuple[float, ...]],
    seeds: int,
    requests: int,
    min_seconds: float,
    *,
    diff_key: str,
    stages: dict[int, tuple[float, ...]],
) -> dict[str, Any]:
    """Every (pausing?, pattern, load) point of one scenario: each price and the smallest anchor
    (`policy_variants.sweep` with batches that never pause, then pausing at `stages`)."""
    smallest = sc["calibration"]["smallest_anchor"]
    variants = {**variants, f"static smallest ({smallest})": {"policy": f"static:{smallest}"}}
    points = []
    for pausing in (False, True):
        swept = policy_variants.sweep(
            suite,
            sc,
            accuracy,
            variants,
            loads,
            seeds,
            requests,
            min_seconds,
            diff_key=diff_key,
            stages=stages if pausing else None,
        )
        points += [{"pausing": pausing, **p} for p in swept["points"]]
    return {"label": sc["label"], "middle_range": sc["calibration"]["middle_range"], "points": points}


def tables(scenarios: dict[str, dict[str, Any]], note: str, diff_key: str, diff_label: str) -> str:
    """`policy_variants.table` with a column for pausing, none for the admitted share in budget."""
    out = [note]
    for name, sc in scenarios.items():
        lo, hi = sc["middle_range"]
        out.append(f"\n## {name} — {sc['label']}\n\nMiddle range: {lo:g}× < load ≤ {hi:.3g}×.\n")
        rows = []
        for p in sc["points"]:
            for contender, c in p["contenders"].items():
                e, r, d = c["expected_accuracy"], c["rejected_share"], c[diff_key]
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
                    diff_label,
                ],
                rows,
            )
        )
    return "\n".join(out)
