"""memory: resident weight bytes of an elastic model vs separate models for the same range.

Three ways to offer the operating points of a stitched model:
- elastic: one `StitchedNet` (anchors + stitching layers), every subnet available;
- anchors only (INFaaS-style variants): the anchors as separate models, which cover the
  range's ends but none of the points between;
- one model per Pareto subnet: each operating point on the front as its own network.
The first two are measured: bytes over unique parameter and buffer storages, as they sit in
memory. The third is an estimate (parameters the subnet touches × bytes per parameter; no
such models are built), and the table says so.
"""

from __future__ import annotations

import argparse

import torch

from elastic.subnet import pareto

from .harness import markdown_table, write_results
from .models import demo_model


def storage_bytes(module: torch.nn.Module) -> int:
    seen = {}
    for t in list(module.parameters()) + list(module.buffers()):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def measure(net) -> dict:
    subnets = net.subnets()
    elem = next(net.parameters()).element_size()
    front = pareto(subnets) if all(s.accuracy is not None for s in subnets) else [s.id for s in subnets]
    anchors = [s for s in subnets if s.kind == "anchor"]
    stitch_bytes = storage_bytes(net.stitches) if hasattr(net, "stitches") else 0
    total = storage_bytes(net)
    return {
        "builder": net.builder,
        "subnets": len(subnets),
        "pareto_subnets": len(front),
        "elastic_bytes": total,
        "stitch_bytes": stitch_bytes,
        "anchors_only_bytes": total - stitch_bytes,
        "anchors_only_points": len(anchors),
        "per_pareto_subnet_bytes": sum(subnets[i].params for i in front) * elem,
        "ratio_vs_per_pareto_subnet": total / max(1, sum(subnets[i].params for i in front) * elem),
    }


def run(args: argparse.Namespace) -> dict:
    r = measure(demo_model(args.model))
    rows = [
        [f"elastic ({r['builder']})", r["subnets"], r["elastic_bytes"] / 2**20, 1.0],
        [
            "anchors as separate models" if r["stitch_bytes"] else "anchors as separate models (n/a: no stitches)",
            r["anchors_only_points"],
            r["anchors_only_bytes"] / 2**20,
            r["anchors_only_bytes"] / r["elastic_bytes"],
        ],
        [
            "one model per Pareto subnet (estimate: params × bytes)",
            r["pareto_subnets"],
            r["per_pareto_subnet_bytes"] / 2**20,
            r["per_pareto_subnet_bytes"] / r["elastic_bytes"],
        ],
    ]
    table = markdown_table(["deployment", "operating points", "weights MiB", "× elastic"], rows)
    write_results(args.out, "memory", r, table, args.command)
    return {**r, "table": table}
