"""`elastic info DIR`: print a saved model's subnet table, from its manifest alone.

Reads `manifest.json` (checked by `elastic.manifest`, pure Python) and never imports torch.
For SN-Net over DeiT Ti/S/B at 224 — the 71 official configurations — each subnet also gets
SN-Net's published ImageNet top-1 (`elastic.builders.published`), by official config id.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elastic.subnet import Subnet, pareto

DEIT_TSB = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print the subnet table of a saved model")
    p.add_argument("path", help="checkpoint directory written by elastic.save")
    p.set_defaults(func=run)


def is_snnet_deit_tsb(manifest: Mapping[str, Any]) -> bool:
    """Whether a manifest is SN-Net v1 over DeiT Ti/S/B at 224 with the official 71 configs."""
    if manifest.get("builder") != "StitchedNet":
        return False
    anchors = manifest.get("anchors", [])
    if tuple(a.get("name") for a in anchors) != DEIT_TSB:
        return False
    if any(a.get("kwargs", {}).get("img_size", 224) != 224 for a in anchors):
        return False
    config = manifest.get("config", {})
    official = dict(window=2, stride=1, nearest=True, plan="v1")
    if any(config.get(k, official[k]) != v for k, v in official.items()):
        return False
    kinds = [s.get("kind") for s in manifest.get("subnets", [])]
    return kinds == ["anchor"] * 3 + ["stitch"] * 68


def format_subnets(subnets: Sequence[Subnet], published: Mapping[int, float] | None = None) -> str:
    """The subnet table: id, kind, MFLOPs, params, accuracy, published top-1, Pareto mark."""
    from elastic.tables import format_table

    front = set(pareto(subnets))
    headers = ["id", "kind", "MFLOPs", "params", "acc %"]
    if published is not None:
        headers.append("SN-Net top-1 %")
    headers += ["P", "description"]
    rows = []
    for s in subnets:
        row = [str(s.id), s.kind, f"{s.flops / 1e6:.2f}", f"{s.params:,}"]
        row.append(f"{100 * s.accuracy:.2f}" if s.accuracy is not None else "-")
        if published is not None:
            row.append(f"{100 * published[s.id]:.2f}" if s.id in published else "-")
        row += ["*" if s.id in front else "", s.description]
        rows.append(row)
    align = [">", "<", ">", ">", ">"] + ([">"] if published is not None else []) + ["<", "<"]
    return format_table(headers, rows, align)


def read_manifest_json(path: str | Path) -> dict[str, Any]:
    """The schema-checked manifest of a saved model: no weights read, no torch imported
    (`elastic.checkpoint.read_manifest` does the same but lives beside torch code).

    Raises:
        CheckpointError: no such checkpoint, or a manifest `elastic.manifest` refuses.
    """
    from elastic.errors import CheckpointError
    from elastic.manifest import parse_json, validate_manifest

    folder = Path(path)
    file = folder / "manifest.json"
    if not file.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint directory (no manifest.json)")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {e}") from e
    manifest = parse_json(data, str(file))
    validate_manifest(manifest, str(file))
    return manifest


def run(args: argparse.Namespace) -> int:
    manifest = read_manifest_json(args.path)
    subnets = [Subnet.from_dict(d) for d in manifest["subnets"]]
    anchors = ", ".join(a.get("label") or a["name"] for a in manifest["anchors"])
    published = None
    if is_snnet_deit_tsb(manifest):
        from elastic.builders.published import snnet_deit_published

        published = {i: row.top1 for i, row in snnet_deit_published().items()}
    note = "; SN-Net top-1 = the published ImageNet result of the same config id" if published else ""
    print(f"{manifest['builder']} over {anchors}: {len(subnets)} subnets (FLOPs per sample; * = Pareto{note})")
    print(format_subnets(subnets, published))
    return 0
