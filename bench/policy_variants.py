"""Variants of the runtime's policy simulated side by side on a load run's calibration.

`pricing` (the busy-period price, with and without pausing), `margin` (the planning
quantile fixed or following the SLO) and `ride_along` (the credit for a request left for a
later batch) ask the same question of different settings: on the same seeds, what does
each variant deliver, and how far is it from the base one? `sweep`
runs every (pattern, load) point of one scenario — each variant on the same arrivals,
budgets and correctness draws (`bench/simulate.py`) — and `table` prints the points.
Reported per point and variant: the expected effective accuracy (mean and 95 % interval
over seeds), the share of admitted requests answered within budget, the rejected share,
the paired difference of expected accuracy against the base variant and, when asked for,
one value read off the scheduler at the end of each run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from elastic.serving.scheduler import BudgetScheduler

from .calibrated import from_calibration, read_load_run
from .harness import markdown_table, write_results
from .headroom import accuracy_of
from .load import workload
from .load_calibration import BATCH_WAIT_MS, MAX_BATCH
from .outcomes import BernoulliJudge, Outcome
from .simulate import simulate
from .stats import mean_interval, paired_difference


def sweep(
    suite: str,
    sc: dict[str, Any],
    accuracy: dict[int, float],
    variants: Mapping[str, Mapping[str, Any]],
    loads: Mapping[str, Sequence[float]],
    seeds: int,
    requests: int,
    min_seconds: float,
    *,
    diff_key: str,
    stages: Mapping[int, Sequence[float]] | None = None,
    at_end: tuple[str, Callable[[BudgetScheduler], float]] | None = None,
) -> dict[str, Any]:
    """Every (pattern, load) point of one scenario (`load.json["scenarios"][name]`), each
    variant on the same seeds.

    Args:
        suite: names the seeds ("<suite>/<pattern>/<load>/<k>") and the progress bar.
        variants: name -> keyword arguments of `simulate` (`policy`, `slo_target`, ...); the
            first is the base the others are compared with, under `diff_key`.
        loads: pattern -> loads (× the scenario's capacity).
        requests, min_seconds: a run lasts for about `requests` arrivals, `min_seconds` at least.
        stages: subnet id -> block boundaries where batches pause (None: they never do).
        at_end: (key, read) to record read(scheduler) at the end of every run, per seed.
    """
    scenario = from_calibration(sc, accuracy)
    calib, acc = scenario.calibration, scenario.accuracy
    base = next(iter(variants))
    points = []
    bar = tqdm(
        total=sum(map(len, loads.values())) * seeds,
        desc=f"{suite}, {sc['label'].split(' ')[0]}",
        unit="seed",
        leave=False,
    )
    for pattern, levels in loads.items():
        for load in levels:
            runs: dict[str, list[tuple[float, ...]]] = {name: [] for name in variants}
            for k in range(seeds):
                seed = f"{suite}/{pattern}/{load}/{k}"
                rate = load * calib["capacity_per_s"]
                arrivals, budget = workload(pattern, rate, max(requests / rate, min_seconds), scenario.budgets, seed)
                for name, options in variants.items():
                    ended: list[float] = []
                    outcomes = simulate(
                        scenario.subnets,
                        scenario.service,
                        options.get("policy", "elastic"),
                        arrivals,
                        budget,
                        BernoulliJudge(acc, seed),
                        max_batch_size=MAX_BATCH,
                        batch_wait_ms=BATCH_WAIT_MS,
                        seed=seed,
                        stages=stages,
                        **{k: v for k, v in options.items() if k != "policy"},
                        on_end=(lambda sched, ended=ended: ended.append(at_end[1](sched))) if at_end else None,
                    )
                    runs[name].append((*scores(outcomes, acc), *ended))
                bar.update()
            base_acc = [v[0] for v in runs[base]]
            contenders = {}
            for name, values in runs.items():
                c = {
                    "expected_accuracy": mean_interval([v[0] for v in values]).to_dict(),
                    "admitted_in_budget": mean_interval([v[1] for v in values]).to_dict(),
                    "rejected_share": mean_interval([v[2] for v in values]).to_dict(),
                }
                if at_end:
                    c[at_end[0]] = [v[3] for v in values]
                c[diff_key] = paired_difference([v[0] for v in values], base_acc).to_dict()
                contenders[name] = c
            points.append({"pattern": pattern, "load": load, "contenders": contenders})
    bar.close()
    return {"label": sc["label"], "middle_range": calib["middle_range"], "points": points}


def scores(outcomes: Sequence[Outcome], accuracy: Mapping[int, float]) -> tuple[float, float, float]:
    """(expected effective accuracy, admitted share in budget, rejected share) of one run."""
    n = len(outcomes)
    admitted = [o for o in outcomes if o.status != "rejected"]
    return (
        sum(accuracy[o.subnet] for o in outcomes if o.on_time) / n,
        sum(o.on_time for o in admitted) / len(admitted) if admitted else 1.0,
        (n - len(admitted)) / n,
    )


def table(
    scenarios: dict[str, dict[str, Any]],
    note: str,
    diff_key: str,
    diff_label: str,
    at_end: tuple[str, str] | None = None,
) -> str:
    """The points of every scenario, one row per variant; `at_end`: (key, column header)
    of the per-seed values `sweep` recorded."""
    out = [note]
    for name, sc in scenarios.items():
        lo, hi = sc["middle_range"]
        out.append(f"\n## {name} — {sc['label']}\n\nMiddle range: {lo:g}× < load ≤ {hi:.3g}×.\n")
        rows = []
        for p in sc["points"]:
            base = next(iter(p["contenders"]))
            for contender, c in p["contenders"].items():
                e, a, r, d = c["expected_accuracy"], c["admitted_in_budget"], c["rejected_share"], c[diff_key]
                row = [
                    p["pattern"],
                    p["load"],
                    contender,
                    f"{e['mean']:.3f} ± {e['half_width']:.3f}",
                    f"{100 * a['mean']:.2f} %",
                    f"{100 * r['mean']:.1f} %",
                ]
                if at_end:
                    row.append(", ".join(f"{q:.3f}" for q in c[at_end[0]]))
                diff = f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
                rows.append([*row, "–" if contender == base else diff])
        header = ["pattern", "load ×", "contender", "expected acc.", "admitted in budget", "rejected"]
        out.append(markdown_table([*header, *([at_end[1]] if at_end else []), diff_label], rows))
    return "\n".join(out)


def variant_suite(
    args: argparse.Namespace,
    suite: str,
    variants: Mapping[str, Mapping[str, Any]],
    loads: Mapping[str, Sequence[float]],
    *,
    seeds: tuple[int, int],
    requests: tuple[int, int],
    min_seconds: float,
    stages: Callable[[str, str | None], Mapping[int, Sequence[float]]],
    diff_key: str,
    diff_label: str,
    note: Callable[[dict[str, Any], int], str],
    extra: Mapping[str, Any],
    at_end: tuple[str, str, Callable[[BudgetScheduler], float]] | None = None,
    sweeper: Callable[..., dict[str, Any]] = sweep,
    tabulate: Callable[..., str] = table,
) -> dict[str, Any]:
    """Run a suite of variants on the load run under `--out`: `sweeper` every scenario
    `--scenario` asks for, `tabulate` them under `note(load run, requests)`, and write
    `<out>/<suite>.json` (the source, `extra`, seeds, requests per run and the scenarios) and
    `.md`.

    Args:
        seeds, requests: (full, `--quick`) seeds per point and requests per run, about.
        stages: (scenario name, model directory) -> the `stages` of `sweep`.
        at_end: (key, column header, read): the `at_end` of `sweep` and of `table`.
        sweeper, tabulate: with the signatures of `sweep` and `table`.

    Returns:
        {"scenarios": name -> what `sweeper` returned, "table": the markdown}.
    """
    source, load, names = read_load_run(args)
    n_seeds, n_requests = (seeds[1], requests[1]) if args.quick else (seeds[0], requests[0])
    read = {"at_end": (at_end[0], at_end[2])} if at_end else {}
    scenarios = {
        name: sweeper(
            suite,
            load["scenarios"][name],
            accuracy_of(name, load["scenarios"][name]["calibration"], args.model),
            variants,
            loads,
            n_seeds,
            n_requests,
            min_seconds,
            diff_key=diff_key,
            stages=stages(name, args.model),
            **read,
        )
        for name in names
    }
    shown = {"at_end": at_end[:2]} if at_end else {}
    markdown = tabulate(scenarios, note(load, n_requests), diff_key, diff_label, **shown)
    write_results(
        args.out,
        suite,
        {
            "source": {"file": str(source), "commit": load["commit"], "date": load["date"]},
            **extra,
            "seeds": n_seeds,
            "requests_per_run": n_requests,
            "scenarios": scenarios,
        },
        markdown,
        args.command,
    )
    return {"scenarios": scenarios, "table": markdown}
