"""`AnchorFamily`: timm models of one architecture family, ordered by cost.

The anchors of an elastic model (SN-Net's term): pretrained networks of one family whose
blocks the builders reuse. The family checks that the models can be stitched (same adapter,
input size and class count), orders them by FLOPs, and captures calibration activations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from elastic.errors import UnsupportedArchitecture

from .adapter import AnchorAdapter, adapt
from .cost import PieceCosts, measure_pieces
from .pretrained import create_anchor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnchorSpec:
    """How to rebuild an anchor with timm (saved in manifests)."""

    name: str  # timm model name
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm kwargs, JSON-serialisable
    label: str | None = None  # display name; defaults to `name`

    @property
    def display(self) -> str:
        return self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs), "label": self.label}


class AnchorFamily(nn.Module):
    """Anchors of one architecture family, cheapest first.

    Args:
        models: timm models of one family (e.g. three `VisionTransformer`s).
        specs: how each model was built, needed to save an elastic model built on them;
            `from_timm` fills this in.
        names: display names; default to the timm architecture names.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        specs: Sequence[AnchorSpec] | None = None,
        names: Sequence[str] | None = None,
    ):
        super().__init__()
        if not models:
            raise ValueError("an anchor family needs at least one model")
        if specs is not None and len(specs) != len(models):
            raise ValueError(f"{len(specs)} specs for {len(models)} models")
        names = list(names) if names else [s.display for s in specs] if specs else [None] * len(models)
        adapters = [adapt(m, n) for m, n in zip(models, names, strict=True)]
        _check_compatible(adapters)
        costs = [measure_pieces(a) for a in adapters]
        order = sorted(range(len(adapters)), key=lambda k: (costs[k].flops, k))
        self.anchors = nn.ModuleList(adapters[k] for k in order)
        self.costs: list[PieceCosts] = [costs[k] for k in order]
        self.specs: list[AnchorSpec] | None = [specs[k] for k in order] if specs else None

    @classmethod
    def from_timm(
        cls,
        names: Sequence[str | tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], str]],
        pretrained: bool | Mapping[str, str | Path] = False,
        **timm_kwargs: Any,
    ) -> AnchorFamily:
        """Build the anchors with timm.

        Args:
            names: timm model names, or (name, per-anchor kwargs[, label]) tuples; the label
                names an anchor in subnet descriptions (e.g. "vit-s" for a resized model).
            pretrained: False, True (HF cache, offline), or {name: local weights file}.
            **timm_kwargs: kwargs for every anchor (`num_classes`, `img_size`, ...).
        """
        specs, models = [], []
        for entry in names:
            spec = _spec(entry, timm_kwargs)
            source = (
                pretrained.get(spec.display, pretrained.get(spec.name, False))
                if isinstance(pretrained, Mapping)
                else pretrained
            )
            models.append(create_anchor(spec.name, source, **spec.kwargs))
            specs.append(spec)
        return cls(models, specs=specs)

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, k: int) -> AnchorAdapter:
        return self.anchors[k]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.anchors]

    def input_size(self) -> tuple[int, int, int]:
        return self.anchors[0].input_size()

    @torch.no_grad()
    def capture(self, images: torch.Tensor) -> list[list[torch.Tensor]]:
        """Activations after every block of every anchor, in eval mode.

        Shape:
            images: (B, C, H, W). Returns `acts[anchor][block]` with the block's output shape.
        """
        was_training = self.training
        self.eval()
        try:
            acts = []
            for a in self.anchors:
                x, outs = a.stem(images), []
                for blk in a.blocks:
                    x = blk(x)
                    outs.append(x)
                acts.append(outs)
            return acts
        finally:
            self.train(was_training)


def _spec(entry, common: Mapping[str, Any]) -> AnchorSpec:
    if isinstance(entry, str):
        return AnchorSpec(entry, dict(common))
    if isinstance(entry, AnchorSpec):
        return AnchorSpec(entry.name, {**common, **entry.kwargs}, entry.label)
    name, own, *label = entry
    return AnchorSpec(name, {**common, **dict(own)}, label[0] if label else None)


def _check_compatible(adapters: Sequence[AnchorAdapter]) -> None:
    first = adapters[0]
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise ValueError(f"anchor names must differ, got {names}: give each a label")
    for a in adapters[1:]:
        if type(a) is not type(first):
            raise UnsupportedArchitecture(
                f"anchor family mixes architectures: {first.name} is {type(first.model).__name__}, "
                f"{a.name} is {type(a.model).__name__}"
            )
        if a.input_size() != first.input_size():
            raise UnsupportedArchitecture(
                f"anchors take different inputs: {first.name} {first.input_size()}, {a.name} {a.input_size()}"
            )
        if a.num_classes() != first.num_classes():
            raise UnsupportedArchitecture(
                f"anchors predict different class counts: {first.name} {first.num_classes()}, "
                f"{a.name} {a.num_classes()}"
            )
