"""parity: a whole-anchor subnet through `StitchedNet` vs timm's own forward.

Same weights, same input: the outputs must agree (max abs diff) and the stitched path must
cost nothing extra (time ratio, interleaved). Run on DeiT-Ti/S at 224 (random weights) and
on the demo's model.
"""

from __future__ import annotations

import argparse
import logging

import torch

from .harness import interleaved, markdown_table, paired_ratio, summary, write_results
from .models import deit_pair, demo_model

log = logging.getLogger(__name__)


@torch.inference_mode()
def compare(net, name: str, batch_sizes=(1, 8), repeats: int = 30) -> list[dict]:
    rows = []
    c, h, w = net.input_size()
    for k, adapter in enumerate(net.family.anchors):
        for b in batch_sizes:
            x = torch.randn(b, c, h, w)
            diff = (net(x, subnet=k) - adapter.model(x)).abs().max().item()
            times = interleaved(
                {"elastic": lambda x=x, k=k: net(x, subnet=k), "timm": lambda x=x, m=adapter.model: m(x)},
                repeats=repeats,
            )
            rows.append(
                {
                    "model": name,
                    "anchor": adapter.name,
                    "batch": b,
                    "max_abs_diff": diff,
                    "ratio": paired_ratio(times["elastic"], times["timm"]),
                    "elastic": summary(times["elastic"]),
                    "timm": summary(times["timm"]),
                }
            )
    return rows


def run(args: argparse.Namespace) -> dict:
    repeats = 10 if args.quick else 40
    demo = demo_model(args.model)  # required: a missing model fails the suite
    rows = compare(deit_pair(), "deit pair (224, random weights)", repeats=repeats)
    rows += compare(demo, "demo model", repeats=repeats)
    table = markdown_table(
        ["model", "anchor", "batch", "elastic ms", "timm ms", "ratio", "max abs diff"],
        [
            [
                r["model"],
                r["anchor"],
                r["batch"],
                r["elastic"]["median_ms"],
                r["timm"]["median_ms"],
                r["ratio"],
                f"{r['max_abs_diff']:.1e}",
            ]
            for r in rows
        ],
    )
    write_results(args.out, "parity", {"rows": rows}, table, args.command)
    return {"rows": rows, "table": table}
