"""load: SLO attainment and effective accuracy vs offered load, against baselines.

Open-loop arrivals (Poisson, and bursty on/off) of Fashion-MNIST test images with labels,
at offered loads from 0.25× to 3× the capacity of the largest anchor — its throughput
through the runtime under a saturating burst (`elastic.serving.served_capacity`), which
includes the per-request cost a forward-only profile leaves out — each request with a
budget drawn log-uniformly between 2× the fastest candidate's served batch-1 latency and
4× the time the largest anchor takes to serve a full batch of 8.

Policies, all through the same `Runtime` (max batch 8):
- elastic: the runtime's default, over the model's accuracy/latency front;
- static smallest / largest: always the smallest / largest anchor;
- static best-single: the one subnet an operator would pick for this load in advance —
  the most accurate front subnet whose batch-1 p99 fits the median budget and whose
  full-batch throughput covers the offered load (else the fastest);
- slackfit: SuperServe's (NSDI'25) SlackFit over the same front;
- infaas: the anchors as separate timm models, one chosen per request (INFaaS, ATC'21),
  no stitched subnets.
Per policy and load: SLO attainment (all requests, and admitted ones), effective accuracy
(correct and within budget, over all requests, from real predictions), p50/p99 latency,
rejected / shed counts, mean batch size.
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path

import torch

from elastic.serving import Runtime, budget_range, replay_schedule, served_capacity

from .arrivals import BudgetDistribution, on_off, poisson
from .harness import markdown_table, write_results
from .models import demo_model
from .variants import AnchorVariants

log = logging.getLogger(__name__)
MAX_BATCH = 8


def best_single(profile, candidates, accuracy, median_budget_ms: float, rate: float) -> int:
    fits = [
        s
        for s in candidates
        if profile.latency_ms(s, 1, "p99") <= median_budget_ms
        and MAX_BATCH / (profile.latency_ms(s, MAX_BATCH, "p50") / 1e3) >= rate
    ]
    if fits:
        return max(fits, key=lambda s: accuracy[s])
    return min(candidates, key=lambda s: profile.latency_ms(s, MAX_BATCH, "p50"))


def run(args: argparse.Namespace) -> dict:
    from elastic.demo.data import fashion_mnist

    model = demo_model(args.model)
    model_dir = Path(args.model) if args.model else Path("out/demo/model")
    images, labels = fashion_mnist(split="test")
    subnets = model.subnets()
    accuracy = {s.id: s.accuracy for s in subnets}
    anchors = [s.id for s in subnets if s.kind == "anchor"]
    variants = AnchorVariants(model).eval()

    with Runtime(model, max_batch_size=MAX_BATCH) as rt:
        profile = rt.profile(images[0], batch_sizes=(1, 2, 4, 8), path=model_dir)
        candidates = rt.candidates
    largest = anchors[-1]
    fastest = min(candidates, key=lambda s: profile.latency_ms(s, 1, "p50"))
    served = served_capacity(model, images[0], largest, profile, MAX_BATCH)
    fast = served_capacity(model, images[0], fastest, profile, MAX_BATCH)
    capacity = served.throughput_per_s
    budgets = BudgetDistribution(*budget_range(fast, served, MAX_BATCH))
    median_budget = (budgets.lo_ms * budgets.hi_ms) ** 0.5
    # the baseline's own profile: the same anchors, measured as separate models
    with Runtime(variants, max_batch_size=MAX_BATCH) as rt:
        variants_profile = rt.profile(images[0], batch_sizes=(1, 2, 4, 8))

    loads = (0.5, 2.0) if args.quick else (0.25, 0.5, 1.0, 2.0, 3.0)
    patterns = ("poisson",) if args.quick else ("poisson", "on_off")
    duration = 4.0 if args.quick else 8.0
    log.info("capacity of the largest anchor: %.0f req/s; budgets %s", capacity, budgets.describe())
    runs = []
    for pattern in patterns:
        for load in loads:
            rate = load * capacity
            rng = random.Random(f"{args.seed}-{pattern}-{load}")
            arrivals = poisson(rate, duration, rng) if pattern == "poisson" else on_off(rate, duration, rng)
            request_budgets = [budgets.sample(rng) for _ in arrivals]
            single = best_single(profile, candidates, accuracy, median_budget, rate)
            policies = [
                ("elastic", model, "elastic", profile),
                ("static smallest", model, f"static:{anchors[0]}", profile),
                ("static largest", model, f"static:{largest}", profile),
                (f"static best-single ({single})", model, f"static:{single}", profile),
                ("slackfit", model, "slackfit", profile),
                ("infaas", variants, "elastic", variants_profile),
            ]
            for name, serving_model, policy, prof in policies:
                with (
                    torch.inference_mode(),
                    Runtime(serving_model, max_batch_size=MAX_BATCH, policy=policy, profile=prof) as rt,
                ):
                    report = replay_schedule(rt, images, labels, arrivals, request_budgets, timeout_s=60)
                runs.append(
                    {
                        "pattern": pattern,
                        "load": load,
                        "rate_per_s": rate,
                        "policy": name.split(" (")[0],
                        "policy_detail": name,
                        **report,
                    }
                )
                log.info(
                    "%s %.2fx %s: SLO %.3f, effective accuracy %.3f",
                    pattern,
                    load,
                    name,
                    report["slo_attainment"],
                    report["effective_accuracy"],
                )
    table = markdown_table(
        [
            "pattern",
            "load ×",
            "policy",
            "SLO",
            "admitted SLO",
            "eff. acc",
            "p50 ms",
            "p99 ms",
            "rejected",
            "shed",
            "batch",
        ],
        [
            [
                r["pattern"],
                r["load"],
                r["policy_detail"],
                r["slo_attainment"],
                r["admitted_slo_attainment"] or 0.0,
                r["effective_accuracy"],
                r["latency_ms"]["p50"] or 0.0,
                r["latency_ms"]["p99"] or 0.0,
                r["rejected"],
                r["shed"],
                r["mean_batch_size"] or 0.0,
            ]
            for r in runs
        ],
    )
    data = {
        "capacity_per_s": capacity,
        "largest_anchor": largest,
        "budgets": budgets.describe(),
        "served_largest": vars(served),
        "served_fastest": vars(fast),
        "duration_s": duration,
        "candidates": candidates,
        "runs": runs,
    }
    write_results(args.out, "load", data, table, args.command)
    plot(runs, Path(args.out) / "load.png")
    return {**data, "table": table}


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patterns = sorted({r["pattern"] for r in runs}, reverse=True)
    fig, axes = plt.subplots(len(patterns), 2, figsize=(11, 4 * len(patterns)), squeeze=False)
    for row, pattern in zip(axes, patterns, strict=True):
        for policy in dict.fromkeys(r["policy"] for r in runs):
            pts = sorted(
                (r["load"], r["slo_attainment"], r["effective_accuracy"])
                for r in runs
                if r["pattern"] == pattern and r["policy"] == policy
            )
            style = dict(marker="o", lw=2.5 if policy == "elastic" else 1.2, label=policy)
            row[0].plot([p[0] for p in pts], [p[1] for p in pts], **style)
            row[1].plot([p[0] for p in pts], [p[2] for p in pts], **style)
        for ax, what in zip(row, ("SLO attainment", "effective accuracy"), strict=True):
            ax.set_xlabel("offered load (× largest anchor's capacity)")
            ax.set_ylabel(what)
            ax.set_title(f"{what}, {pattern} arrivals")
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
