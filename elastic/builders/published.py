"""Published results shipped with elastic, readable by code.

SN-Net's official table for DeiT-Ti/S/B (`data/snnet_deit_tsb_official.jsonl`, provenance
in `data/README.md`): the 71 configurations by official id, their fvcore FLOPs (which are
multiply-adds, LayerNorm included) and ImageNet top-1. Pure Python: no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

SNNET_DEIT_TSB = "snnet_deit_tsb_official.jsonl"


@dataclass(frozen=True)
class PublishedSubnet:
    """One row of a published table."""

    id: int  # the official configuration id
    macs: int  # multiply-adds per sample as published (fvcore "FLOPs")
    params: int  # parameters
    top1: float  # ImageNet-1k top-1 accuracy in [0, 1]


@cache
def snnet_deit_published() -> dict[int, PublishedSubnet]:
    """SN-Net's published DeiT-Ti/S/B table: official config id -> its row."""
    text = resources.files("elastic.builders").joinpath("data", SNNET_DEIT_TSB).read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {
        r["cfg_id"]: PublishedSubnet(r["cfg_id"], int(r["flops"]), int(r["params"]), r["acc1"] / 100.0) for r in rows
    }
