"""switching: is changing subnet between requests free?

Alternating two subnets request by request is timed against running each one back to back
(interleaved rounds, ratio of medians). A switch must copy no weights: a dispatch mode
watches every op during the alternation and adds up the bytes of any copy whose source is a
parameter's storage.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from elastic.subnet import pareto

from .harness import interleaved, markdown_table, paired_ratio, summary, write_results
from .models import deit_pair, demo_model

COPY_OPS = {"copy_", "_to_copy", "clone", "contiguous", "to", "_copy_from"}  # ops that duplicate a tensor


class WeightCopyCounter(TorchDispatchMode):
    """Counts bytes of copy-like ops whose inputs alias a parameter storage."""

    def __init__(self, params):
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in params}
        self.bytes = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in COPY_OPS:
            for a in args:
                tensors = a if isinstance(a, (list, tuple)) else [a]
                for t in tensors:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in self.storages:
                        self.bytes += t.numel() * t.element_size()
                        self.ops.append(name)
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def measure(net, name: str, repeats: int, batch: int = 1) -> dict:
    subnets = net.subnets()
    has_acc = all(s.accuracy is not None for s in subnets)
    front = pareto(subnets) if has_acc else [s.id for s in subnets]
    a, b = front[0], front[-1]
    x = torch.randn(batch, *net.input_size())
    params = [p for p in net.parameters()]
    ptrs_before = [p.data_ptr() for p in params]
    with WeightCopyCounter(params) as counter:
        for _ in range(3):
            net(x, subnet=a)
            net(x, subnet=b)
    moved = sum(p0 != p.data_ptr() for p0, p in zip(ptrs_before, params, strict=True))
    times = interleaved(
        {
            "alternating": lambda: (net(x, subnet=a), net(x, subnet=b)),
            "same_a": lambda: (net(x, subnet=a), net(x, subnet=a)),
            "same_b": lambda: (net(x, subnet=b), net(x, subnet=b)),
        },
        repeats=repeats,
    )
    same = [(p + q) / 2 for p, q in zip(times["same_a"], times["same_b"], strict=True)]
    return {
        "model": name,
        "subnets": [a, b],
        "batch": batch,
        "ratio": paired_ratio(times["alternating"], same),
        "alternating": summary(times["alternating"]),
        "same_a": summary(times["same_a"]),
        "same_b": summary(times["same_b"]),
        "weight_bytes_copied": counter.bytes,
        "params_moved": moved,
    }


def run(args: argparse.Namespace) -> dict:
    repeats = 10 if args.quick else 40
    net = demo_model(args.model)  # required: a missing model fails the suite
    rows = [measure(net, "demo model", repeats, b) for b in (1, 8)]
    rows.append(measure(deit_pair(), "deit pair (224)", repeats // 2))
    table = markdown_table(
        ["model", "subnets", "batch", "alternating ms", "same ms (mean of both)", "ratio", "weight bytes copied"],
        [
            [
                r["model"],
                f"{r['subnets'][0]} ↔ {r['subnets'][1]}",
                r["batch"],
                r["alternating"]["median_ms"],
                (r["same_a"]["median_ms"] + r["same_b"]["median_ms"]) / 2,
                r["ratio"],
                r["weight_bytes_copied"],
            ]
            for r in rows
        ],
    )
    write_results(args.out, "switching", {"rows": rows}, table, args.command)
    return {"rows": rows, "table": table}
