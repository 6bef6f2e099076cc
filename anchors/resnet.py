"""Adapter for timm's `ResNet` (ResNet, ResNet-D, SE/ECA variants).

Stem: conv1 / bn1 / act1 / maxpool. Blocks: the residual blocks of layer1..layer4 in order,
their stage being the layer index, so stitching stays between feature maps of one resolution
(SN-Net's rule for CNNs). Head: global pooling and `fc`.
"""

from __future__ import annotations

import torch
from timm.models.resnet import ResNet
from torch import nn

from .adapter import AnchorAdapter, register_adapter


@register_adapter(ResNet)
class ResNetAdapter(AnchorAdapter):
    family = "resnet"
    feature_layout = "nchw"

    def __init__(self, model: nn.Module, name: str | None = None):
        super().__init__(model, name)
        layers = [model.layer1, model.layer2, model.layer3, model.layer4]
        self._stages = [s for s, layer in enumerate(layers) for _ in layer]
        self._blocks = [blk for layer in layers for blk in layer]  # a view, not registered twice

    @property
    def blocks(self) -> list[nn.Module]:
        return self._blocks

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.maxpool(m.act1(m.bn1(m.conv1(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x)

    def head_modules(self) -> list[nn.Module]:
        return [self.model.global_pool, self.model.fc]

    def stage(self, block: int) -> int:
        return self._stages[block]
