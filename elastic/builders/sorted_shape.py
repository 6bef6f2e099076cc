"""What a SortedNet subnet is (`SortedShape`) and which timm ViTs SortedNet can slice.

SortedNet (Valipour et al., 2023) keeps nested prefixes of one network; here a prefix is the
first d blocks, w embedding channels, h attention heads and m MLP hidden units of a timm
`VisionTransformer`. Slicing is only exact for pieces whose math does not depend on the
sizes cut away, so anything else (attention pooling, gated attention, other norms) is refused
with `UnsupportedArchitecture` rather than run approximately.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.layers import LayerScale, Mlp
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from elastic.errors import UnsupportedArchitecture


@dataclass(frozen=True, order=True)
class SortedShape:
    """The prefix sizes of one subnet."""

    depth: int  # blocks kept: the first `depth`
    width: int  # embedding channels kept: the first `width`
    heads: int  # attention heads kept in every block: the first `heads`
    mlp: int  # MLP hidden units kept in every block: the first `mlp`

    def describe(self) -> str:
        return f"d{self.depth} w{self.width} h{self.heads} mlp{self.mlp}"


def check_supported(vit: nn.Module) -> None:
    """Raise `UnsupportedArchitecture` unless `vit` is a timm ViT whose pieces we can slice."""
    if not isinstance(vit, VisionTransformer):
        raise UnsupportedArchitecture(f"SortedNet slices timm VisionTransformer models, not {type(vit).__name__}")
    problems = []
    if vit.attn_pool is not None:
        problems.append("attention pooling")
    if vit.dynamic_img_size or vit.pos_embed is None or not vit.patch_embed.flatten:
        problems.append("dynamic image size or no learned position embedding")
    norms = [vit.patch_embed.norm, vit.norm_pre, vit.norm, vit.fc_norm]
    for blk in vit.blocks:
        if type(blk) is not Block or type(blk.attn) is not Attention or type(blk.mlp) is not Mlp:
            problems.append(f"block type {type(blk).__name__}/{type(blk.attn).__name__}/{type(blk.mlp).__name__}")
            break
        if blk.attn.gate is not None or not isinstance(blk.attn.norm, nn.Identity):
            problems.append("gated or scale-normed attention")
        norms += [blk.norm1, blk.norm2, blk.mlp.norm]
        if not all(isinstance(m, (nn.Identity, LayerScale)) for m in (blk.ls1, blk.ls2)):
            problems.append("layer scale of another type")
    if not all(isinstance(m, (nn.Identity, nn.LayerNorm)) for m in norms):
        problems.append("norm layers other than LayerNorm")
    elif len({m.eps for m in norms if isinstance(m, nn.LayerNorm)}) > 1:
        problems.append("LayerNorms with different eps")
    if problems:
        raise UnsupportedArchitecture(f"SortedNet cannot slice this ViT: {', '.join(sorted(set(problems)))}")


def check_shape(s: SortedShape, depth: int, width: int, heads: int, mlp: int, head_dim: int, tied: bool) -> None:
    if not (1 <= s.depth <= depth and 1 <= s.width <= width and 1 <= s.heads <= heads and 1 <= s.mlp <= mlp):
        raise ValueError(
            f"subnet {s.describe()} does not fit in the anchor (d{depth} w{width} h{heads} mlp{mlp}): "
            "depths, widths, heads and mlp_ratios * width must lie within it"
        )
    if tied and s.width % head_dim:
        raise ValueError(f"width {s.width} is not a multiple of the head width {head_dim}; pass heads= explicitly")
