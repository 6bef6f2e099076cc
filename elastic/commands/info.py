"""`elastic info DIR`: print a saved model's subnet table."""

from __future__ import annotations

import argparse

from elastic.subnet import Subnet, pareto


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print the subnet table of a saved model")
    p.add_argument("path", help="checkpoint directory written by elastic.save")
    p.set_defaults(func=run)


def format_table(subnets: list[Subnet]) -> str:
    """Fixed-width table: id, kind, MFLOPs, params, accuracy, Pareto mark, description."""
    front = set(pareto(subnets))
    lines = [f"{'id':>4}  {'kind':<7} {'MFLOPs':>10} {'params':>12} {'acc %':>7}  P  description"]
    for s in subnets:
        acc = f"{100 * s.accuracy:7.2f}" if s.accuracy is not None else f"{'-':>7}"
        mark = "*" if s.id in front else " "
        lines.append(f"{s.id:>4}  {s.kind:<7} {s.flops / 1e6:>10.2f} {s.params:>12,} {acc}  {mark}  {s.description}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from elastic.checkpoint import read_manifest

    manifest = read_manifest(args.path)
    subnets = [Subnet.from_dict(d) for d in manifest["subnets"]]
    anchors = ", ".join(a.get("label") or a["name"] for a in manifest["anchors"])
    print(f"{manifest['builder']} over {anchors}: {len(subnets)} subnets (FLOPs per sample; * = Pareto)")
    print(format_table(subnets))
    return 0
