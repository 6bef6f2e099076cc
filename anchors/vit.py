"""Adapter for timm's `VisionTransformer` (ViT, DeiT, DeiT III).

Stem: patch embedding, class/register tokens and position embedding, `norm_pre`.
Blocks: `model.blocks`. Head: final `norm`, token pooling, `fc_norm`, classifier.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .adapter import AnchorAdapter, register_adapter


@register_adapter(VisionTransformer)
class ViTAdapter(AnchorAdapter):
    family = "vit"
    feature_layout = "tokens"

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.blocks

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.patch_embed(x)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(x))

    def head_modules(self) -> list[nn.Module]:
        m = self.model
        return [m.norm, m.fc_norm, m.head] + ([m.attn_pool] if m.attn_pool is not None else [])

    def input_size(self) -> tuple[int, int, int]:
        pe = self.model.patch_embed
        return (pe.proj.in_channels, *pe.img_size)
