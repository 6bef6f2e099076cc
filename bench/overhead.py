"""overhead: what the runtime adds to a request, vs calling the model directly.

`Runtime.infer` at a fixed subnet (`static:<id>`, infinite budget) against `model(x, subnet)`
on the same input, interleaved. Batch 1: one `infer` per round. Batch 8: eight requests
submitted together and awaited (the runtime batches them itself; the mean batch it formed
is reported) against one direct forward of a batch of eight. The gap is what a request pays
for validation, queueing, the worker hand-off, batching and slicing the answer.
"""

from __future__ import annotations

import argparse
import logging
import math

import torch

from elastic.serving import LatencyProfile, Runtime

from .harness import interleaved, markdown_table, paired_ratio, summary, write_results
from .models import deit_pair, demo_model

log = logging.getLogger(__name__)


def flat_profile(model, subnet: int, batch_sizes=(1, 8)) -> LatencyProfile:
    """A placeholder profile: with an infinite budget and a static policy nothing reads it."""
    table = {subnet: {b: 1.0 for b in batch_sizes}}
    return LatencyProfile.from_table(table, device="cpu")


@torch.inference_mode()
def measure(model, name: str, subnet: int, repeats: int) -> list[dict]:
    x1 = torch.randn(1, *model.input_size())
    x8 = torch.randn(8, *model.input_size())
    rows = []
    with Runtime(model, max_batch_size=8, policy=f"static:{subnet}", profile=flat_profile(model, subnet)) as rt:
        batches: list[int] = []

        def runtime_8():
            futures = [rt.submit(x8[i], math.inf) for i in range(8)]
            batches.extend(f.result().batch_size for f in futures)

        for batch, direct, served in (
            (1, lambda: model(x1, subnet=subnet), lambda: rt.infer(x1, math.inf)),
            (8, lambda: model(x8, subnet=subnet), runtime_8),
        ):
            times = interleaved({"runtime": served, "direct": direct}, repeats=repeats, warmup=5)
            r, d = summary(times["runtime"]), summary(times["direct"])
            rows.append(
                {
                    "model": name,
                    "subnet": subnet,
                    "batch": batch,
                    "runtime": r,
                    "direct": d,
                    "ratio": paired_ratio(times["runtime"], times["direct"]),
                    "added_us_per_request": 1e3 * (r["median_ms"] - d["median_ms"]) / batch,
                    "mean_runtime_batch": (sum(batches) / len(batches)) if batch == 8 and batches else 1.0,
                }
            )
    return rows


def run(args: argparse.Namespace) -> dict:
    repeats = 20 if args.quick else 100
    rows = measure(deit_pair(), "deit_tiny (224)", 0, max(10, repeats // 4))
    try:
        model = demo_model(args.model)
        for s in [s.id for s in model.subnets() if s.kind == "anchor"]:
            rows += measure(model, "demo", s, repeats)
    except Exception as e:
        log.warning("demo model skipped: %s", e)
    table = markdown_table(
        ["model", "subnet", "batch", "direct ms", "runtime ms", "ratio", "µs added / request", "runtime batch"],
        [
            [
                r["model"],
                r["subnet"],
                r["batch"],
                r["direct"]["median_ms"],
                r["runtime"]["median_ms"],
                r["ratio"],
                r["added_us_per_request"],
                r["mean_runtime_batch"],
            ]
            for r in rows
        ],
    )
    write_results(args.out, "overhead", {"rows": rows}, table, args.command)
    return {"rows": rows, "table": table}
