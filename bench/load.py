"""load: effective accuracy and SLO attainment vs offered load — elastic against every static choice.

Scenarios (`bench/scenarios.py`): the demo model with real Fashion-MNIST predictions, and
DeiT-Ti/S/B stitched at a reduced image size with SN-Net's published accuracies and latencies
measured here. Per scenario, measured first (`calibrate`): the latency profile, and the
served capacity of the largest and of the smallest anchor — the throughput of the static
subnet through the runtime under a burst, driven as the load runs drive it
(`served_open_loop`) — with the runtime's own per-request / per-batch cost as its engine
fitted it. Offered loads are multiples of the largest anchor's served capacity; budgets are
drawn per request, log-uniform between 2× a lone request's service on the smallest anchor
and 4× a full batch's on the largest, each the profile's median forward plus the fitted
cost (`elastic.serving.budget_range`). The served batch-1 median they replaced moved the
tightest budget by 20–30 % between runs; the profile's medians moved by a few per cent
between most runs, but by 39 % between 6126bc1 and 4cf3df2 (the smallest demo anchor at
2.24 and 1.37 ms) while the load runs' forwards took about the same, and it was 1.83 ms at
97c049f, whose forwards under Poisson load took 2.49–4.8 ms at the median (load.md, "The
machine under load"): the profile times forwards back to back, and on a shared VM those can
run much faster than forwards between arrivals.
Arrivals are open-loop Poisson or bursty on/off (`bench/arrivals.py`).

Contenders, all through the same `Runtime` (max batch 8): `elastic`; `elastic, fixed margin`
(the same with its planning quantile held at its start, `Runtime(slo_target=None)`: what
following the SLO buys, serving/slo_margin.py); `slackfit` (SuperServe's
SlackFit, NSDI'25); `infaas` (the anchors as separate models, one chosen per request, INFaaS
ATC'21); static smallest / largest anchor; and the **oracle best static**: every front subnet
served statically, the best mean effective accuracy at that load reported — an oracle, since
no operator knows the load in advance.

Method: each (scenario, pattern, load) is run with `repeats` seeds; a seed fixes the arrivals,
the budgets and (for drawn correctness) the draws, and every contender runs on it — in a
shuffled order, all of them before the next seed. Reported: the mean over seeds and its 95 %
Student-t interval; elastic vs the oracle as a paired difference per seed with its interval.
Every run is one continuous trace whose first `warmup` seconds are not scored: each contender
gets a fresh runtime, and a run scored from its first request would weigh what the runtime
learns in its first second (arrival rate, forward correction, measured tail, planning
margin) as much as the steady state of a server that runs for hours; the warm-up requests
run like all others, on the same process, and only the rest count.

Two modes, reported apart (`load.*` real, `load_sim.*` simulated), never mixed:
- simulated (`bench/simulate.py`): the real scheduler on a virtual clock over the measured
  profile and overheads; a dense load grid, every front subnet as a static contender;
- real: forwards on this machine at a coarser grid. Running every front subnet statically
  for real costs too long here, so the real oracle runs the static smallest and largest
  anchors plus the `oracle_extra` front subnets the simulation ranks best at that load; the
  results name every static that ran.

Targets (issue 9), computed per point for `elastic`: effective accuracy not below the oracle
(the upper end of the paired difference's interval >= 0); at loads where the largest anchor
cannot keep up but the smallest can (1× < load <= its capacity / the largest's) at
least 5 points above it (mean difference >= 0.05); >= 99 % of admitted requests within
budget; sheds after admission <= 1 % of admitted (both pooled over seeds).

Files: the calibration in `bench/load_calibration.py`; the per-point summary, the targets,
the tables and the plot in `bench/load_report.py`; the runs and the sweep here.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from elastic.errors import ConfigError
from elastic.serving import Runtime

from .arrivals import BudgetDistribution, on_off, poisson
from .harness import write_results
from .load_calibration import BATCH_WAIT_MS, MAX_BATCH, Calibration, calibrate
from .load_report import (
    FIXED_MARGIN,
    TARGET_ADMITTED,
    TARGET_DELTA,
    TARGET_SHED,
    plot,
    summarize,
    tables,
    target_summary,
)
from .outcomes import BernoulliJudge, score
from .replay import replay_outcomes
from .scenarios import Scenario, deit_scenario, demo_scenario
from .simulate import simulate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Span:
    """How long one run's arrivals last: long enough for `requests` arrivals, within bounds."""

    min_s: float  # at least this long
    max_s: float  # at most this long
    requests: int  # aim for this many arrivals (the expected count at the offered rate)

    def seconds(self, rate_per_s: float) -> float:
        return min(self.max_s, max(self.min_s, self.requests / rate_per_s))


@dataclass(frozen=True)
class LoadPlan:
    """How much of the load grid a run covers (`--quick` or full)."""

    patterns: tuple[str, ...]  # arrival processes
    real_loads: tuple[float, ...]  # × the largest anchor's served capacity, real runs
    sim_loads: tuple[float, ...]  # the simulated grid
    repeats: int  # seeds per real point
    sim_repeats: int  # seeds per simulated point
    span: Span  # arrivals of one real run
    sim_span: Span  # arrivals of one simulated run (virtual seconds)
    oracle_extra: int  # front subnets run statically for real besides the two anchors
    deit_front: int  # published-front subnets of the DeiT scenario to profile and serve
    warmup: Span = Span(0.0, 0.0, 0)  # unscored arrivals before every run's scored ones
    add_middle: bool = True  # real runs also at the middle of the middle range when no load lies in it

    def real_loads_of(self, calib: Calibration) -> list[float]:
        """The loads real runs cover: `real_loads`, plus the middle range's middle when
        `add_middle` and no load lies in it (`Calibration.real_loads`)."""
        return calib.real_loads(self.real_loads) if self.add_middle else sorted(set(self.real_loads))


FULL = LoadPlan(
    patterns=("poisson", "on_off"),
    # plus the middle of a scenario's measured middle range when none of these lies in it
    # (`Calibration.real_loads`: on a slow machine the demo's range was 1x-1.3x)
    real_loads=(0.25, 1.0, 1.5, 2.0, 3.0),
    sim_loads=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0),
    repeats=5,  # 3 left intervals wider than the gaps they judged (t = 4.3 at 2 degrees of freedom)
    sim_repeats=4,
    span=Span(2.0, 5.0, 400),  # DeiT: 5 s at 0.25x, 2 s from 2.3x; the demo: 2 s everywhere
    sim_span=Span(4.0, 60.0, 4000),
    oracle_extra=2,
    deit_front=6,
    # DeiT: 3 s up to 2x (the 32 batches before the measured tail replaces the profile's at
    # about 1x), 2 s at 3x; the demo: 1 s, a thousand requests and more
    warmup=Span(1.0, 3.0, 200),
)
QUICK = LoadPlan(
    patterns=("poisson",),
    real_loads=(0.5, 2.0),
    sim_loads=(0.25, 0.5, 1.0, 2.0, 3.0),
    repeats=3,
    sim_repeats=3,
    span=Span(1.0, 2.5, 20),
    sim_span=Span(2.0, 30.0, 200),
    oracle_extra=1,
    deit_front=2,
    warmup=Span(0.5, 1.0, 20),
)


REDRAWS = 20  # traces `warmed_workload` draws for one with a scored arrival


def workload(
    pattern: str, rate: float, duration_s: float, budgets: BudgetDistribution, seed: str
) -> tuple[list[float], list[float]]:
    """Arrival times and budgets of one run: the same for every contender on `seed`."""
    rng = random.Random(seed)
    if pattern == "poisson":
        arrivals = poisson(rate, duration_s, rng)
    elif pattern == "on_off":
        arrivals = on_off(rate, duration_s, rng)
    else:
        raise ValueError(f"unknown arrival pattern {pattern!r}")
    return arrivals, [budgets.sample(rng) for _ in arrivals]


def warmed_workload(
    pattern: str,
    rate: float,
    warmup_s: float,
    duration_s: float,
    budgets: BudgetDistribution,
    seed: str,
    *,
    redraw: bool = True,
) -> tuple[list[float], list[float], int]:
    """One continuous trace of `warmup_s` + `duration_s` seconds (`workload`) and the index of
    its first request at or after `warmup_s`: the ones before it warm the runtime up, unscored.

    A trace with no arrival in its scored part (an on/off off period that outlasts a short
    window) measures nothing, yet would score 0 for every contender. With `redraw` such a
    trace is drawn again, from `seed` + "/redraw k" for k = 1, 2, ...: still a function of
    `seed` alone, so the trace can be regenerated from it (`bench/headroom.py`).

    Raises:
        ValueError: `REDRAWS` traces in a row held no scored arrival (the rate is too low
            for the window).
    """
    key = seed
    for k in range(1, REDRAWS + 1):
        arrivals, budget = workload(pattern, rate, warmup_s + duration_s, budgets, key)
        first = bisect.bisect_left(arrivals, warmup_s)
        if first < len(arrivals) or not redraw or rate <= 0:
            return arrivals, budget, first
        key = f"{seed}/redraw {k}"
    raise ValueError(
        f"{REDRAWS} {pattern} traces at {rate:g} requests/s held no arrival in their scored {duration_s:g} s"
    )


def contender_name(policy: str, calib: Calibration) -> str:
    if policy == FIXED_MARGIN:
        return "elastic, fixed margin"
    if policy == f"static:{calib.smallest}":
        return f"static smallest ({calib.smallest})"
    if policy == f"static:{calib.largest}":
        return f"static largest ({calib.largest})"
    return policy


def run_one(
    mode: str,
    scenario: Scenario,
    calib: Calibration,
    policy: str,
    arrivals,
    budgets,
    seed: str,
    lanes: int = 1,
    scored_from: int = 0,
) -> dict[str, Any]:
    """One contender on one workload, real or simulated (one lane only); its score over the
    requests from `scored_from` on (those before warm the runtime up, `warmed_workload`)."""
    infaas = policy == "infaas"
    fixed_margin = policy == FIXED_MARGIN
    runtime_policy = "elastic" if infaas or fixed_margin else policy
    slo_target = None if fixed_margin else 0.99
    extra: dict[str, Any] = {}
    if mode == "sim":
        if lanes != 1:
            raise ValueError("the simulator models one lane")
        model = scenario.variants() if infaas else scenario.model
        accuracy = {s.id: s.accuracy for s in model.subnets() if s.accuracy is not None}
        # with preemption every subnet of the model may pause at its block boundaries (the
        # INFaaS-style baseline's separate models never do: they have no stage boundaries)
        stages = {s.id: model.stage_fractions(s.id) for s in model.subnets()} if scenario.preempt else None
        outcomes = simulate(
            model.subnets(),
            calib.variants_service if infaas else calib.service,
            runtime_policy,
            arrivals,
            budgets,
            BernoulliJudge(accuracy, seed),
            max_batch_size=MAX_BATCH,
            batch_wait_ms=BATCH_WAIT_MS,
            seed=seed,
            stages=stages,
            slo_target=slo_target,
            on_end=lambda sched: extra.update(planning_quantile=sched.latency.forward.tail_quantile),
        )[scored_from:]
    else:
        model = scenario.variants() if infaas else scenario.model
        profile = calib.variants_profile if infaas else calib.profile
        with (
            torch.inference_mode(),
            Runtime(
                model,
                max_batch_size=MAX_BATCH,
                policy=runtime_policy,
                profile=profile,
                batch_wait_ms=BATCH_WAIT_MS,
                lanes=lanes,
                executor=scenario.executor_for(model),
                preempt=None if scenario.preempt else False,  # None: the runtime's default
                slo_target=slo_target,
            ) as rt,
        ):
            lag: list[float] = []
            forward: list[float] = []
            outcomes = replay_outcomes(
                rt,
                scenario.images,
                arrivals,
                budgets,
                scenario.real_judge(seed),
                lag=lag,
                forward_ms=forward,
                scored_from=scored_from,
            )
            # where the planning margin ended (with several lanes, the last one's; `slo_target=None` keeps its start)
            extra["planning_quantile"] = rt.metrics.registry.get_sample_value("elastic_planning_quantile")
        extra["submit_lag_ms"] = {"p50": 1e3 * statistics.median(lag), "max": 1e3 * max(lag)} if lag else None
        forward.sort()
        extra["forward_ms"] = (
            {"p50": statistics.median(forward), "p99": forward[int(0.99 * (len(forward) - 1))], "max": forward[-1]}
            if forward
            else None
        )
    s = score(outcomes)
    n = s["requests"]
    return {
        **s,
        **extra,
        "rejected_share": s["rejected"] / n if n else 0.0,
        "p50_ms": s["latency_ms"]["p50"],
        "p99_ms": s["latency_ms"]["p99"],
    }


def sweep(
    mode: str,
    scenario: Scenario,
    calib: Calibration,
    patterns: Sequence[str],
    loads: Sequence[float],
    repeats: int,
    span: Span,
    statics_at: dict[tuple[str, float], list[int]] | None,
    seed: int,
    warmup: Span = Span(0.0, 0.0, 0),
) -> list[dict[str, Any]]:
    """Every contender at every (pattern, load), `repeats` seeds, interleaved within a seed.

    Args:
        statics_at: (pattern, load) -> static subnets to run there; None runs every static.
        warmup: the unscored start of every run (`warmed_workload`).
    """
    runs = []
    for pattern in patterns:
        for load in loads:
            statics = calib.statics() if statics_at is None else statics_at[(pattern, load)]
            policies = ["elastic", FIXED_MARGIN, "slackfit", "infaas"] + [f"static:{s}" for s in statics]
            for r in range(repeats):
                key = f"{seed}/{scenario.name}/{pattern}/{load}/{r}"
                rate = load * calib.capacity_per_s
                warm_s = warmup.seconds(rate)
                arrivals, budgets, first = warmed_workload(
                    pattern, rate, warm_s, span.seconds(rate), calib.budgets, key
                )
                order = policies[:]
                random.Random(f"order/{key}").shuffle(order)
                for policy in order:
                    t0 = time.perf_counter()
                    result = run_one(mode, scenario, calib, policy, arrivals, budgets, key, scored_from=first)
                    runs.append(
                        {
                            "scenario": scenario.name,
                            "pattern": pattern,
                            "load": load,
                            "repeat": r,
                            "seed": key,
                            "policy": policy,
                            "contender": contender_name(policy, calib),
                            "duration_s": span.seconds(rate),
                            "warmup_s": warm_s,
                            "warmup_requests": first,
                            "wall_s": time.perf_counter() - t0,
                            **result,
                        }
                    )
                log.info(
                    "%s %s %s %.2fx seed %d: %s",
                    mode,
                    scenario.name,
                    pattern,
                    load,
                    r,
                    ", ".join(f"{x['policy']} {x['effective_accuracy']:.3f}" for x in runs[-len(order) :]),
                )
    return runs


def shortlist(sim_points: list[dict], plan: LoadPlan, calib: Calibration) -> dict[tuple[str, float], list[int]]:
    """Statics to run for real per (pattern, load): both anchors + the simulation's best others."""
    chosen = {}
    for pattern in plan.patterns:
        pts = [p for p in sim_points if p["pattern"] == pattern]
        for load in plan.real_loads_of(calib):
            nearest = min(pts, key=lambda p: abs(p["load"] - load))
            ranked = sorted(
                (p for p in nearest["contenders"] if p.startswith("static:")),
                key=lambda p: -nearest["contenders"][p]["effective_accuracy"]["mean"],
            )
            extra = [
                int(p.split(":")[1]) for p in ranked if int(p.split(":")[1]) not in (calib.smallest, calib.largest)
            ]
            chosen[(pattern, load)] = sorted(
                {calib.smallest, calib.largest, *extra[: plan.oracle_extra]}, key=calib.candidates_order
            )
    return chosen


def focused(plan: LoadPlan, patterns: str | None, loads: str | None, repeats: int | None) -> LoadPlan:
    """`plan` narrowed to some points, or given more seeds (`--patterns`, `--loads`,
    `--repeats`): a point the full grid found close, run again with more seeds. The
    simulation sweeps its grid for the chosen patterns (it ranks the statics to run for
    real); real runs cover exactly the loads given.

    Raises:
        ConfigError: an unknown pattern, a load that is not a positive number, or fewer
            than 2 seeds (no interval).
    """
    changes: dict[str, Any] = {}
    if patterns is not None:
        chosen = tuple(dict.fromkeys(p.strip() for p in patterns.split(",") if p.strip()))
        unknown = [p for p in chosen if p not in FULL.patterns]
        if unknown or not chosen:
            raise ConfigError(f"--patterns takes some of {', '.join(FULL.patterns)}; got {patterns!r}")
        changes["patterns"] = chosen
    if loads is not None:
        try:
            values = tuple(float(x) for x in loads.split(",") if x.strip())
        except ValueError:
            values = ()
        if not values or not all(math.isfinite(x) and x > 0 for x in values):
            raise ConfigError(f"--loads takes positive numbers (x the largest anchor's capacity), got {loads!r}")
        changes.update(real_loads=tuple(sorted(set(values))), add_middle=False)
    if repeats is not None:
        if repeats < 2:
            raise ConfigError(f"--repeats must be at least 2 (an interval needs two seeds), got {repeats}")
        changes["repeats"] = repeats
    return replace(plan, **changes)


def run(args: argparse.Namespace) -> dict:
    plan = focused(
        QUICK if args.quick else FULL,
        getattr(args, "patterns", None),
        getattr(args, "loads", None),
        getattr(args, "repeats", None),
    )
    only = getattr(args, "scenario", None) or "all"
    builders = {
        "demo": lambda: demo_scenario(args.model, profile_repeats=10 if args.quick else 30),
        "deit": lambda: deit_scenario(front_size=plan.deit_front, profile_repeats=5 if args.quick else 8),
    }
    chosen = builders if only == "all" else {only: builders[only]}
    executor = getattr(args, "executor", None) or "eager"
    if executor != "eager":
        chosen = {name: _served_by(build, executor) for name, build in chosen.items()}
    if getattr(args, "no_preempt", False):
        chosen = {name: _never_pausing(build) for name, build in chosen.items()}
    return run_scenarios(chosen, plan, args.out, args.command, args.seed, bool(getattr(args, "simulate", False)))


def _served_by(build: Callable[[], Scenario], executor: str) -> Callable[[], Scenario]:
    """`build`, with the scenario's real runs served through `executor` (and labelled so)."""

    from elastic.serving.executor import executor_class

    def built() -> Scenario:
        scenario = build()
        scenario.executor = executor
        scenario.preempt = scenario.preempt and executor_class(executor).pausable  # else a forward is one call
        baseline = "eager" if executor == "process" else executor  # `Scenario.executor_for`
        scenario.label += f"; forwards through the {executor} executor (INFaaS's separate models: {baseline})"
        if not scenario.preempt:
            scenario.label += ", batches never pause"
        return scenario

    return built


def _never_pausing(build: Callable[[], Scenario]) -> Callable[[], Scenario]:
    """`build`, with batches that never pause at block boundaries, real and simulated
    (`Runtime(preempt=False)`; the default pauses them for urgent requests), and labelled so."""

    def built() -> Scenario:
        scenario = build()
        scenario.preempt = False
        scenario.label += "; batches never pause (preempt=False)"
        return scenario

    return built


def run_scenarios(
    builders: dict[str, Callable[[], Scenario]],
    plan: LoadPlan,
    out: str | Path,
    command: str,
    seed: int = 0,
    sim_only: bool = False,
) -> dict[str, Any]:
    """Calibrate, simulate and (unless `sim_only`) run every scenario for real; write the results.

    Writes `load_sim.{json,md,png}` and, with real runs, `load.{json,md,png}` into `out`, only
    once everything has run.
    """
    t_start = time.perf_counter()
    real: dict[str, dict[str, Any]] = {}
    sim: dict[str, dict[str, Any]] = {}
    for name, build in builders.items():
        scenario = build()
        try:
            sim[name], real_runs = _run_scenario(scenario, plan, seed, sim_only)
        finally:
            scenario.close()
        if real_runs is not None:
            real[name] = real_runs
    method = {
        "repeats": "each (scenario, pattern, load) run on several seeds; every contender on each seed, in a "
        "shuffled order, all before the next seed",
        "warmup": "each run is one continuous trace; the requests of its first `warmup` seconds (per scenario, "
        "from the offered rate) run like the others but are not scored",
        "interval": "mean over seeds, two-sided 95 % Student-t interval; elastic − oracle as a paired difference",
        "oracle": "oracle best static = the static subnet with the best mean effective accuracy at that point",
        "targets": {
            "not_below_oracle": "upper end of the 95 % interval of elastic − oracle >= 0",
            "five_points_above_oracle": f"middle range only: mean of elastic − oracle >= {TARGET_DELTA}",
            "admitted_within_budget": f"elastic, pooled over seeds: on-time / admitted >= {TARGET_ADMITTED}",
            "shed_after_admission": f"elastic, pooled over seeds: shed / admitted <= {TARGET_SHED}",
        },
        "max_batch_size": MAX_BATCH,
        "plan": {k: vars(v) if isinstance(v, Span) else v for k, v in vars(plan).items()},
    }
    result: dict[str, Any] = {"sim_targets": target_summary(sim), "seconds": time.perf_counter() - t_start}
    sim_table = tables(sim, "sim")
    write_results(
        out,
        "load_sim",
        {"mode": "simulated", "method": method, "scenarios": sim, "targets": target_summary(sim)},
        sim_table,
        command,
    )
    plot(sim, Path(out) / "load_sim.png", "simulated")
    table = sim_table
    if not sim_only:
        table = tables(real, "real")
        write_results(
            out,
            "load",
            {"mode": "real", "method": method, "scenarios": real, "targets": target_summary(real)},
            table,
            command,
        )
        plot(real, Path(out) / "load.png", "real")
        result["targets"] = target_summary(real)
    log.info("load suite took %.0f s", time.perf_counter() - t_start)
    return {**result, "sim": sim, "real": real, "table": table}


def _run_scenario(
    scenario: Scenario, plan: LoadPlan, seed: int, sim_only: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Calibrate one scenario, sweep it in simulation and (unless `sim_only`) for real."""
    calib = calibrate(scenario)
    common = {
        "label": scenario.label,
        "executor": scenario.executor,
        "preempt": scenario.preempt,
        "accuracy_source": scenario.accuracy_source,
        "notes": scenario.notes,
        "calibration": calib.to_dict(),
    }
    t0 = time.perf_counter()
    sim_runs = sweep(
        "sim", scenario, calib, plan.patterns, plan.sim_loads, plan.sim_repeats, plan.sim_span, None, seed, plan.warmup
    )
    sim_points = summarize(sim_runs, calib)
    sim_result = {
        **common,
        "accuracy_source": scenario.accuracy_source
        + "; in simulation every answer's correctness is drawn with its subnet's accuracy",
        "seeds": plan.sim_repeats,
        "span": vars(plan.sim_span),
        "warmup": vars(plan.warmup),
        "seconds": time.perf_counter() - t0,
        "points": sim_points,
        "runs": sim_runs,
    }
    if sim_only:
        return sim_result, None
    t0 = time.perf_counter()
    statics_at = shortlist(sim_points, plan, calib)
    real_loads = plan.real_loads_of(calib)
    real_runs = sweep(
        "real", scenario, calib, plan.patterns, real_loads, plan.repeats, plan.span, statics_at, seed, plan.warmup
    )
    real_result = {
        **common,
        "seeds": plan.repeats,
        "span": vars(plan.span),
        "warmup": vars(plan.warmup),
        "seconds": time.perf_counter() - t0,
        "oracle_note": (
            "statics run for real at each point: the smallest and largest anchors plus the "
            f"{plan.oracle_extra} front subnet(s) the simulation ranked best there (`statics_run`)"
        ),
        "points": summarize(real_runs, calib),
        "runs": real_runs,
    }
    return sim_result, real_result
