"""headroom: how far the load suite's contenders sit below what any schedule could reach.

Reads the load suite's real results (`<out>/load.json`), regenerates each run's trace from
its seed — the arrivals and budgets every contender got, past the unscored warm-up — and
solves the fluid bound (`bench/bounds.py`) on it twice: over every subnet the contenders
could serve (the front and the two anchors: `Calibration.statics`), and over the oracle best
static's one subnet. The bound uses the run's own calibration (profile medians, the runtime's fitted per-batch and
per-request cost, the budgets), so a rerun on the same file gives the same numbers.

What it tells: the bound over all subnets minus the oracle is what per-request choice could
gain over the best fixed choice if batches could be paused and split anywhere and forwards
took their median time; the oracle's own bound minus its measured accuracy is what the
fixed choice loses to queueing, blocking and the machine. A large first gap means a target
like "+5 points over the oracle" is not ruled out by capacity; it is lost to scheduling.

The bound is for the trace as scheduled. A real run whose submitting thread fell behind its
schedule (`submit_lag_ms`, recorded per run and shown per point) was offered a smoother
trace, and its measured value can exceed the bound. The INFaaS-style contender serves
separate models with their own profile and is not covered.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from tqdm.auto import tqdm

from elastic.errors import ConfigError
from elastic.serving.profile import LatencyProfile

from .arrivals import BudgetDistribution
from .bounds import fluid_bound
from .calibrated import read_load_run
from .harness import markdown_table, write_results
from .load import warmed_workload
from .load_calibration import MAX_BATCH
from .simulate import ServiceModel
from .stats import mean_interval, paired_difference

log = logging.getLogger(__name__)
RESOLUTION = 1 / 8  # grid step as a share of the tightest budget: widens windows only (an upper bound still)


def run(args: argparse.Namespace) -> dict:
    source, load, _ = read_load_run(args)  # every scenario of the run
    scenarios = {
        name: headroom(sc, accuracy_of(name, sc["calibration"], args.model)) for name, sc in load["scenarios"].items()
    }
    table = tables(scenarios, load)
    write_results(
        args.out,
        "headroom",
        {"source": {"file": str(source), "commit": load["commit"], "date": load["date"]}, "scenarios": scenarios},
        table,
        args.command,
    )
    return {"scenarios": scenarios, "table": table}


def accuracy_of(name: str, calibration: dict[str, Any], model_dir: str | None) -> dict[int, float]:
    """The subnets' accuracies a load run used: recorded in its calibration (from 2026-12-02
    on); for an earlier file, SN-Net's published table (DeiT) or the served model's manifest."""
    if calibration.get("accuracy"):
        return {int(s): float(v) for s, v in calibration["accuracy"].items()}
    if name == "deit":
        from elastic.builders.published import snnet_deit_published

        return {sid: row.top1 for sid, row in snnet_deit_published().items()}
    from elastic.checkpoint import read_manifest

    subnets = read_manifest(model_dir or "out/demo/model")["subnets"]
    return {int(s["id"]): float(s["accuracy"]) for s in subnets if s.get("accuracy") is not None}


def headroom(sc: dict[str, Any], accuracy: dict[int, float]) -> dict[str, Any]:
    """The fluid bounds of every real point of one scenario, beside its measured contenders."""
    calib = sc["calibration"]
    profile = LatencyProfile.from_table({int(s): row for s, row in calib["profile_p50_ms"].items()})
    over = calib["overhead_ms"]
    service = ServiceModel(profile, over["per_request"], over["per_batch"])
    budgets = BudgetDistribution(*calib["budget_bounds_ms"])
    served = sorted({*calib["candidates"], calib["smallest_anchor"], calib["largest_anchor"]})
    missing = [s for s in served if s not in accuracy or s not in profile.p50_ms]
    if missing:
        raise ConfigError(f"subnets {missing} have no accuracy or no profile: is this the model the load ran?")
    points = []
    t0 = time.perf_counter()
    traces = sum(r["policy"] == "elastic" for r in sc["runs"])
    bar = tqdm(total=traces, desc=f"fluid bounds, {sc['label'].split(' ')[0]}", unit="trace", leave=False)
    for p in sc["points"]:
        oracle = p["oracle"]["subnet"]
        runs = sorted(
            (r for r in sc["runs"] if r["pattern"] == p["pattern"] and r["load"] == p["load"]),
            key=lambda r: r["repeat"],
        )
        elastic = [r for r in runs if r["policy"] == "elastic"]
        statics = [r for r in runs if r["policy"] == p["oracle"]["policy"]]
        every, alone = [], []
        for r in elastic:
            warm_s = r.get("warmup_s", 0.0)  # runs before warm-ups were scored from their start
            # a run with no scored request predates redrawing such traces (6126bc1 and earlier)
            arrivals, budget, first = warmed_workload(
                p["pattern"],
                p["load"] * calib["capacity_per_s"],
                warm_s,
                r["duration_s"],
                budgets,
                r["seed"],
                redraw=r["requests"] > 0,
            )
            # the scored part alone (a ceiling: the warm-up's backlog could only lower it)
            arrivals, budget = [t - warm_s for t in arrivals[first:]], budget[first:]
            if len(arrivals) != r["requests"]:
                raise ValueError(
                    f"seed {r['seed']!r} gives {len(arrivals)} arrivals, the run had {r['requests']}: "
                    "the results come from a different arrival process than this code's"
                )
            grid = RESOLUTION * budgets.lo_ms
            every.append(fluid_bound(arrivals, budget, {s: accuracy[s] for s in served}, service, MAX_BATCH, grid))
            alone.append(fluid_bound(arrivals, budget, {oracle: accuracy[oracle]}, service, MAX_BATCH, grid))
            bar.update()
        lags = [r["submit_lag_ms"]["p50"] for r in runs if r.get("submit_lag_ms")]
        measured_oracle = [r["effective_accuracy"] for r in statics]
        measured_elastic = [r["effective_accuracy"] for r in elastic]
        points.append(
            {
                "pattern": p["pattern"],
                "load": p["load"],
                "middle_range": p["middle_range"],
                "oracle_subnet": oracle,
                "bound": mean_interval(every).to_dict(),
                "oracle_bound": mean_interval(alone).to_dict(),
                "oracle": mean_interval(measured_oracle).to_dict(),
                "elastic": mean_interval(measured_elastic).to_dict(),
                "bound_minus_oracle": paired_difference(every, measured_oracle).to_dict(),
                "elastic_minus_oracle": p["elastic_minus_oracle"],
                # the driver behind its schedule offered another (smoother) trace than the bound's
                "submit_lag_ms_p50_worst": max(lags) if lags else None,
                "bounds_per_seed": every,
                "oracle_bounds_per_seed": alone,
            }
        )
        log.info(
            "%s %.2fx: fluid bound %.3f, oracle's %.3f",
            p["pattern"],
            p["load"],
            points[-1]["bound"]["mean"],
            points[-1]["oracle_bound"]["mean"],
        )
    bar.close()
    return {
        "label": sc["label"],
        "subnets": served,
        "resolution_ms": RESOLUTION * budgets.lo_ms,
        "seconds": time.perf_counter() - t0,
        "points": points,
    }


def tables(scenarios: dict[str, dict[str, Any]], load: dict[str, Any]) -> str:
    out = [
        f"Fluid bound (`bench/bounds.py`) on the traces of the load suite's real runs of commit {load['commit']} "
        f"({load['date']}); each trace regenerated from its seed, with that run's profile medians, fitted "
        "overheads and budgets. Mean ± 95 % t-interval over seeds.\n"
    ]
    for name, sc in scenarios.items():
        out.append(
            f"## {name} — {sc['label']}\n\nBound over subnets {sc['subnets']} (the front and both anchors); "
            f"windows widened to a {sc['resolution_ms']:.3g} ms grid.\n"
        )
        rows = []
        for p in sc["points"]:
            b, g, e = p["bound"], p["bound_minus_oracle"], p["elastic_minus_oracle"]
            lag = p["submit_lag_ms_p50_worst"]
            rows.append(
                [
                    p["pattern"],
                    p["load"],
                    "middle" if p["middle_range"] else "",
                    f"{b['mean']:.3f} ± {b['half_width']:.3f}",
                    p["oracle_subnet"],
                    f"{p['oracle_bound']['mean']:.3f}",
                    f"{p['oracle']['mean']:.3f}",
                    f"{p['elastic']['mean']:.3f}",
                    f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]",
                    f"{e['mean']:+.3f}",
                    f"{100 * e['mean'] / g['mean']:.0f} %" if g["mean"] > 0 else "–",
                    "–" if lag is None else f"{lag:.3g}",
                ]
            )
        out.append(
            markdown_table(
                [
                    "pattern",
                    "load ×",
                    "range",
                    "fluid bound",
                    "oracle subnet",
                    "its bound",
                    "oracle measured",
                    "elastic measured",
                    "bound − oracle (95 % CI)",
                    "elastic − oracle",
                    "share of the headroom elastic took",
                    "driver lag ms",
                ],
                rows,
            )
        )
        out.append("")
    out.append(
        "The fluid bound relaxes serving one trace on one worker: each request pays its share of the "
        "cheapest batch of its subnet that fits its budget (as if companions were there to fill it), "
        "placed anywhere between its arrival and deadline, paused and split at will; forwards take the "
        "profile's median. No policy beats it in expectation unless its forwards run faster than those "
        "medians. 'its bound' is the same over the oracle's one subnet. The bound is for the trace as "
        "scheduled: 'driver lag ms' is how far the submitting thread fell behind that schedule (the worst "
        "run's median over every contender); where it is comparable to the budgets, the runs were offered a "
        "smoother trace than the bound's, and a measured value may exceed it. For real predictions "
        "(the demo) the accuracies are the model's recorded ones, not those on the images served."
    )
    return "\n".join(out)
