"""overhead: what the runtime adds to a request, vs calling the model directly.

`Runtime.infer` at a fixed subnet (`static:<id>`, infinite budget) against `model(x, subnet)`
on the same input, interleaved. Batch 1: one `infer` per round. Batch 8: eight requests
submitted together and awaited (the runtime batches them itself; the mean batch it formed
is reported, over the timed rounds only) against one direct forward of a batch of eight.
The gap is what a request pays for validation, queueing, the worker hand-off, batching and
slicing the answer. One more batch-8 row, labelled `submit_many`, times the same eight
requests sent in one `Runtime.submit_many` call (a caller that already holds the batch),
in the same interleaved rounds.

Batch 1 also reports the runtime's time outside the forward: each `infer`'s wall time less
the forward time its `Result` reports — one timing per call, not the difference of two
noisy rounds. A diagnostic row ("demo, caches evicted", no target) repeats the first demo
row with an untimed deit_tiny forward before every timed call: the same code and model,
starting from the caches a large forward leaves, which is where deit_tiny's own rows run.

Refusals: one more measurement times a `submit` the runtime refuses (a budget below the
fastest subnet's prediction: `BudgetInfeasible` from admission), per call on the caller's
thread — what each request turned away costs in overload, where most are.

refit_ms: one more table times batch-1 requests of the first demo row under several
`Runtime(refit_ms=...)` settings, in rotating blocks (`bench/refit_cadence.py`): what the
latency model's refit cadence costs a request, the evidence for its default.

Targets (issue 9), per row on the CPU: <= 100 µs added per request at batch 1; at batch 8
the runtime's time <= 1.15× the direct batched forward's.

Rows: after `WARMUP` untimed calls of every contender, `ROUNDS` timed rounds for each demo
row and a twelfth as many for deit_tiny's (30 ms forwards), whose rows come after the demo
rows: the first hundred rounds on the small model after a runtime that served deit_tiny run
slower than its steady state (back to back on one machine, 183 µs [129, 234] added, then
118 [96, 139] on the next row alike), which is what a row is meant to measure.

Noise: each round times both contenders back to back, so each row is judged on the paired
per-round values (runtime - direct per request at batch 1, runtime / direct at batch 8):
their median, and a distribution-free 95 % interval of that median (order statistics of the
rounds; Conover, *Practical Nonparametric Statistics*, the binomial interval for a median).
A row passes when the whole interval meets the target, fails when none of it does, and is
"within noise" when the interval straddles the target: more rounds, or a quieter machine,
would be needed to say. A 30 ms forward on a shared CPU swings by more than the 100 µs
target from round to round, so such rows end "within noise" rather than pass or fail by luck.
The interval covers the noise between the rounds of one run, not a change of the machine's
state between runs (another tenant's load): on the shared 2-core machine the batch-8 ratios of
repeated runs spread by about ±0.07, several times the interval of one run.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
from collections.abc import Callable

import torch

from elastic.errors import BudgetInfeasible
from elastic.serving import LatencyProfile, Runtime

from .harness import interleaved, markdown_table, paired_ratio, summary, write_results
from .models import deit_pair, demo_model
from .refit_cadence import refit_cadence
from .stats import median_interval, verdict

log = logging.getLogger(__name__)
TARGET_ADDED_US = 100.0  # batch 1: most µs the runtime may add per request
TARGET_RATIO_B8 = 1.15  # batch 8: most runtime / direct time
EVICTED = "demo, caches evicted"  # a diagnostic row, not one of the targets' rows
WARMUP = 20  # untimed calls of every contender before a row's timed rounds
ROUNDS = 300  # timed rounds of a demo row (deit_tiny's: a twelfth, its forwards are ~30× longer)
EVICTED_ROUNDS = 100  # the diagnostic row's (each round runs two untimed deit_tiny forwards)


def flat_profile(model, subnet: int, batch_sizes=(1, 8)) -> LatencyProfile:
    """A placeholder profile: with an infinite budget and a static policy nothing reads it."""
    table = {subnet: {b: 1.0 for b in batch_sizes}}
    return LatencyProfile.from_table(table, device="cpu")


@torch.inference_mode()
def measure(
    model,
    name: str,
    subnet: int,
    repeats: int,
    before: Callable[[], object] | None = None,
    batch_sizes: tuple[int, ...] = (1, 8),
) -> list[dict]:
    """The rows of one (model, subnet): batch 1, then batch 8 (8 × submit, submit_many).

    Args:
        batch_sizes: which of the two to measure.
        before: run, untimed, before every timed call of every contender (the caches'
            state each call starts from; None: whatever the previous call left).
    """
    x1 = torch.randn(1, *model.input_size())
    x8 = torch.randn(8, *model.input_size())
    rows = []
    with Runtime(model, max_batch_size=8, policy=f"static:{subnet}", profile=flat_profile(model, subnet)) as rt:
        batches: dict[str, list[int]] = {"submit": [], "submit_many": []}
        exec_ms: list[float] = []  # batch 1: the forward's own time inside each timed `infer`

        def runtime_1():
            exec_ms.append(rt.infer(x1, math.inf).exec_ms)

        def runtime_8():
            futures = [rt.submit(x8[i], math.inf) for i in range(8)]
            batches["submit"].extend(f.result().batch_size for f in futures)

        def runtime_many():
            futures = rt.submit_many(x8, math.inf)
            batches["submit_many"].extend(f.result().batch_size for f in futures)

        for batch, direct, served in (
            (1, lambda: model(x1, subnet=subnet), {"infer": runtime_1}),
            (8, lambda: model(x8, subnet=subnet), {"submit": runtime_8, "submit_many": runtime_many}),
        ):
            if batch not in batch_sizes:
                continue
            for _ in range(WARMUP):
                direct()
                for fn in served.values():
                    fn()
            for counted in (*batches.values(), exec_ms):
                counted.clear()  # count the batches of the timed rounds only
            times = interleaved({**served, "direct": direct}, repeats=repeats, warmup=0, before=before)
            d = summary(times["direct"])
            for call in served:
                pairs = list(zip(times[call], times["direct"], strict=True))
                ratio = paired_ratio(times[call], times["direct"])
                ratio_ci = median_interval([a / b for a, b in pairs])
                # paired: the median over rounds of (runtime - direct), per request
                added_ci = median_interval([1e6 * (a - b) / batch for a, b in pairs])
                added_us = added_ci[0]
                if batch == 8 and len(batches[call]) != 8 * repeats:
                    raise RuntimeError(f"expected {8 * repeats} timed {call} answers, counted {len(batches[call])}")
                outside: list[float] | None = None
                if batch == 1:
                    judged = verdict(added_ci[1], added_ci[2], TARGET_ADDED_US)
                    target = {"added_us_per_request": TARGET_ADDED_US}
                    # the runtime's own time: the call's wall time less its forward (one timing,
                    # no difference of two rounds, so far less noisy than `added` on long forwards)
                    outside = list(
                        median_interval([1e6 * w - 1e3 * e for w, e in zip(times[call], exec_ms, strict=True)])
                    )
                else:
                    judged = verdict(ratio_ci[1], ratio_ci[2], TARGET_RATIO_B8)
                    target = {"ratio": TARGET_RATIO_B8}
                target |= {"verdict": judged, "pass": judged == "pass"}
                rows.append(
                    {
                        "model": name,
                        "subnet": subnet,
                        "batch": batch,
                        "call": "infer" if batch == 1 else ("8 × submit" if call == "submit" else "submit_many"),
                        "runtime": summary(times[call]),
                        "direct": d,
                        "ratio": ratio,
                        "ratio_ci95": list(ratio_ci[1:]),
                        "added_us_per_request": added_us,
                        "added_us_ci95": list(added_ci[1:]),
                        "outside_forward_us": outside,  # batch 1: [median, lo, hi]
                        "caches": "evicted" if before is not None else "as left",
                        "rounds": repeats,
                        "mean_runtime_batch": sum(batches[call]) / len(batches[call]) if batch == 8 else 1.0,
                        "target": target,
                    }
                )
    return rows


@torch.inference_mode()
def refusal_cost(model, subnet: int, repeats: int, per_round: int = 8) -> dict:
    """µs per refused `submit` (a budget below the fastest prediction), the median over
    `repeats` rounds of `per_round` calls with its 95 % interval."""
    x = torch.randn(1, *model.input_size())
    per_call: list[float] = []
    with Runtime(model, max_batch_size=8, policy=f"static:{subnet}", profile=flat_profile(model, subnet)) as rt:
        budget = 1e-3  # ms: below the flat profile's 1 ms, refused at admission

        def refused() -> None:
            for _ in range(per_round):
                try:
                    rt.submit(x, budget)
                except BudgetInfeasible:
                    continue
                raise RuntimeError("a request with an infeasible budget was admitted")

        times = interleaved({"refused": refused}, repeats=repeats, warmup=WARMUP)["refused"]
        per_call = [1e6 * t / per_round for t in times]
        refusals = rt.metrics.registry.get_sample_value("elastic_rejections_total", {"reason": "infeasible"})
    median, lo, hi = median_interval(per_call)
    return {"subnet": subnet, "us_per_refusal": median, "us_ci95": [lo, hi], "rounds": repeats, "counted": refusals}


def run(args: argparse.Namespace) -> dict:
    repeats = 20 if args.quick else ROUNDS
    model = demo_model(args.model)  # required: a missing model fails the suite
    anchors = [s.id for s in model.subnets() if s.kind == "anchor"]
    rows = []
    for s in anchors:
        rows += measure(model, "demo", s, repeats)
    refusal = refusal_cost(model, anchors[0], repeats)
    blocks, per_block = (3, 100) if args.quick else (8, 200)
    refit = refit_cadence(model, anchors[0], flat_profile(model, anchors[0]), blocks, per_block)
    # deit_tiny's rows last: a runtime that served 34 ms forwards leaves the next row's first
    # hundred rounds slower (their own steady state is what a row measures)
    deit = deit_pair()
    rows += measure(deit, "deit_tiny (224)", 0, max(10, repeats // 12))
    # the first demo row again, but each call starts with the caches a deit_tiny forward
    # leaves (its ~23 MB of weights evict the runtime's Python objects): what the Python path
    # costs around a large forward, with the model and the code held fixed
    evict = functools.partial(deit, torch.randn(1, *deit.input_size()), subnet=0)
    rows += measure(model, EVICTED, anchors[0], min(repeats, EVICTED_ROUNDS), before=evict, batch_sizes=(1,))
    table = markdown_table(
        [
            "model",
            "subnet",
            "batch",
            "call",
            "direct ms",
            "runtime ms",
            "ratio [95 % interval]",
            "µs added / request [95 % interval]",
            "µs outside the forward [95 % interval]",
            "runtime batch",
            "target",
        ],
        [
            [
                r["model"],
                r["subnet"],
                r["batch"],
                r["call"],
                r["direct"]["median_ms"],
                r["runtime"]["median_ms"],
                f"{r['ratio']:.3g} [{r['ratio_ci95'][0]:.3g}, {r['ratio_ci95'][1]:.3g}]",
                f"{r['added_us_per_request']:.3g} [{r['added_us_ci95'][0]:.3g}, {r['added_us_ci95'][1]:.3g}]",
                "–" if r["outside_forward_us"] is None else "{:.3g} [{:.3g}, {:.3g}]".format(*r["outside_forward_us"]),
                r["mean_runtime_batch"],
                "diagnostic"
                if r["model"] == EVICTED
                else ("≤ 100 µs " if r["batch"] == 1 else "≤ 1.15× ") + r["target"]["verdict"],
            ]
            for r in rows
        ],
    )
    own = [r for r in rows if r["call"] != "submit_many" and r["model"] != EVICTED]  # the targets' rows
    counts = {v: sum(r["target"]["verdict"] == v for r in own) for v in ("pass", "FAIL", "within noise")}
    table += (
        f"\n\nTargets (batch 1: ≤ 100 µs added; batch 8: ≤ 1.15× direct, eight separate submits), judged on the"
        f" paired per-round values (runtime − direct per request at batch 1, runtime / direct at batch 8): of"
        f" {len(own)} rows, {counts['pass']} pass (the whole 95 % interval of the median meets the target),"
        f" {counts['FAIL']} FAIL (none of it does), {counts['within noise']} within noise (the interval contains"
        " the target: this run cannot tell). The interval is distribution-free, from the order statistics of the"
        " rounds; it covers the noise between rounds of this run, not drift between runs. The submit_many rows"
        " time the same eight requests sent in one call. µs outside the forward (batch 1): each `infer`'s wall"
        " time less the forward time its `Result` reports, i.e. the runtime's own Python path. The row"
        f" '{EVICTED}' repeats the first demo row with a deit_tiny forward (untimed) before every timed call:"
        " the same code and model, starting from the caches a large forward leaves."
        f"\n\nA refused `submit` (demo subnet {refusal['subnet']}, a budget below the fastest prediction:"
        f" `BudgetInfeasible` from admission) costs {refusal['us_per_refusal']:.3g} µs"
        f" [{refusal['us_ci95'][0]:.3g}, {refusal['us_ci95'][1]:.3g}] on the caller's thread (median of"
        f" {refusal['rounds']} rounds of 8 calls, 95 % interval)."
    )
    table += "\n\n" + refit_table(refit, blocks, per_block)
    data = {"rows": rows, "refusal": refusal, "refit": refit}
    write_results(args.out, "overhead", data, table, args.command)
    return data | {"table": table}


def refit_table(refit: list[dict], blocks: int, per_block: int) -> str:
    """The refit_ms A/B (`bench/refit_cadence.py`) as a sentence and a table."""
    subnet = refit[0]["subnet"]
    head = (
        f"refit_ms (`Runtime(refit_ms=...)`, serving/refit.py): µs added per batch-1 request on demo subnet"
        f" {subnet}, one runtime per setting, {blocks} blocks of {per_block} rounds each in rotating order"
        " (median of infer − direct over the rounds, 95 % interval; 'default' is the runtime's)."
    )
    return (
        head
        + "\n\n"
        + markdown_table(
            ["refit_ms", "µs added / request [95 % interval]", "rounds"],
            [
                [
                    f"{r['refit_ms']:g}" + (" (default)" if r["default"] else ""),
                    f"{r['added_us_per_request']:.3g} [{r['added_us_ci95'][0]:.3g}, {r['added_us_ci95'][1]:.3g}]",
                    r["rounds"],
                ]
                for r in refit
            ],
        )
    )
