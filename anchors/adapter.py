"""Anchor adapters: one per timm architecture family, exposing stem / blocks / head.

A builder never reaches into a timm model's private forward; it asks the adapter for three
public pieces, which compose back to the model's own `forward`:

    logits = adapter.head(blocks[-1](...blocks[0](adapter.stem(x))))

Adapters are registered by timm class (`@register_adapter(VisionTransformer)`), like timm's
own model registry, so supporting a new family is one small file.
"""

from __future__ import annotations

from itertools import islice
from typing import ClassVar

import torch
from torch import nn

from elastic.errors import UnsupportedArchitecture

_ADAPTERS: dict[type, type[AnchorAdapter]] = {}


def register_adapter(*model_classes: type):
    """Class decorator: use this adapter for timm models of exactly these classes."""

    def wrap(adapter_cls: type[AnchorAdapter]) -> type[AnchorAdapter]:
        for cls in model_classes:
            _ADAPTERS[cls] = adapter_cls
        return adapter_cls

    return wrap


def supported_families() -> list[str]:
    return sorted(cls.__name__ for cls in _ADAPTERS)


def adapt(model: nn.Module, name: str | None = None) -> AnchorAdapter:
    """Wrap a timm model in the adapter registered for its exact class."""
    adapter_cls = _ADAPTERS.get(type(model))
    if adapter_cls is None:
        raise UnsupportedArchitecture(
            f"no anchor adapter for {type(model).__name__}; supported timm classes: {', '.join(supported_families())}"
        )
    return adapter_cls(model, name=name)


class AnchorAdapter(nn.Module):
    """A timm model seen as stem → blocks → head.

    Attributes:
        model: the wrapped timm model (its parameters live here, unchanged).
        name: the anchor's name, e.g. "deit_tiny_patch16_224".
        blocks: the model's blocks in execution order (`nn.ModuleList` view, no copies).
    """

    family: ClassVar[str]  # "vit" | "resnet"
    feature_layout: ClassVar[str]  # "tokens" (B, N, C) or "nchw" (B, C, H, W)

    def __init__(self, model: nn.Module, name: str | None = None):
        super().__init__()
        self.model = model
        self.name = name or model.pretrained_cfg.get("architecture", type(model).__name__)

    @property
    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm (where the family has one), pooling and classifier."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """Modules whose parameters `head` uses."""
        raise NotImplementedError

    def stage(self, block: int) -> int:
        """Resolution stage of a block: stitching pairs blocks of the same stage."""
        return 0

    def forward_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run blocks[start:stop] (iterated, not sliced: a slice of a `ModuleList` is a new
        `ModuleList`, ~20 µs to build on every forward of a small model)."""
        for blk in islice(self.blocks, start, stop):
            x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_blocks(self.stem(x), 0, self.depth))

    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) the model was built for."""
        return tuple(self.model.pretrained_cfg["input_size"])

    def num_classes(self) -> int:
        return int(self.model.num_classes)
