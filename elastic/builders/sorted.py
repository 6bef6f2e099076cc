"""`SortedNet`: nested sub-networks of one timm ViT (SortedNet, Valipour et al., 2023).

One anchor, many subnets, no extra weights: a subnet keeps the first d blocks, the first w
embedding channels, the first h attention heads of every kept block and the first m MLP
hidden units, and reads everything else (patch embedding, class token, position embedding,
norms, classifier) through the same prefix. Once-for-All, slimmable networks, DynaBERT,
AutoFormer and MatFormer share the idea; SortedNet trains many such nested sub-models at
once. Every subnet's weights are *views* (slices) of the anchor's parameters, so switching
subnets copies and allocates no weights, and gradients of any subnet land in the anchor.

Width slicing of LayerNorm: a subnet of width w normalises over its w channels and uses the
first w scales and shifts — AutoFormer's ``LayerNormSuper`` and HAT do this, and it is
exactly what a standalone timm ViT of width w holds (MatFormer and DynaBERT never slice the
embedding width, so they never face the question). Each head keeps the anchor's head width
(timm `attn_head_dim`), so h heads give an attention width of h * head_dim.

Subnet ids are ordered by FLOPs (cheapest first; the full network last when it is in the
grid), FLOPs counted with `torch.utils.flop_counter` with fused attention off.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import LayerScale, use_fused_attn
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn
from torch.nn import functional as F

from elastic.anchors import AnchorAdapter, AnchorFamily, AnchorSpec, create_anchor
from elastic.anchors.cost import count_flops, unfused_attention
from elastic.builders.sorted_shape import SortedShape, check_shape, check_supported
from elastic.errors import CheckpointError
from elastic.model import ElasticModel, register_builder
from elastic.subnet import Subnet

log = logging.getLogger(__name__)


@register_builder
class SortedNet(ElasticModel):
    """Nested prefixes of one timm `VisionTransformer`.

    The grid is the cross product of the four axes (every combination is nested in the
    full network); heads=None ties the head count to the width (w / head_dim heads), as the
    DeiT family does.

    Args:
        anchor: a timm `VisionTransformer`, its `AnchorAdapter`, or an `AnchorFamily` (its
            largest anchor is used).
        depths: blocks kept; default {D/2, 3D/4, D}.
        widths: embedding channels kept; default {C/4, C/2, 3C/4, C} (multiples of the head width).
        heads: heads kept; None ties them to the width.
        mlp_ratios: MLP hidden units per kept embedding channel (timm's `mlp_ratio` of the
            subnet); default (1, 2, the anchor's).
        spec: how to rebuild the anchor with timm (needed to save); taken from an
            `AnchorFamily` built with `from_timm`.
    """

    builder = "SortedNet"

    def __init__(
        self,
        anchor: VisionTransformer | AnchorAdapter | AnchorFamily,
        depths: Sequence[int] | None = None,
        widths: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        mlp_ratios: Sequence[float] | None = None,
        spec: AnchorSpec | None = None,
    ):
        super().__init__()
        if isinstance(anchor, AnchorFamily):
            spec = spec or (anchor.specs[-1] if anchor.specs else None)
            anchor = anchor[len(anchor) - 1]
        vit = anchor.model if isinstance(anchor, AnchorAdapter) else anchor
        name = anchor.name if isinstance(anchor, AnchorAdapter) else (spec.display if spec else "vit")
        check_supported(vit)
        self.vit = vit
        self.name = spec.display if spec is not None else name
        self.spec = spec
        attn = vit.blocks[0].attn
        self.head_dim = attn.head_dim
        full_depth, full_width = len(vit.blocks), vit.embed_dim
        full_heads, full_mlp = attn.num_heads, vit.blocks[0].mlp.fc1.out_features
        depths = sorted(set(depths or {max(1, full_depth // 2), max(1, 3 * full_depth // 4), full_depth}))
        widths = sorted(
            set(
                widths
                or {max(self.head_dim, full_width * k // 4 // self.head_dim * self.head_dim) for k in (1, 2, 3, 4)}
            )
        )
        ratios = sorted(set(mlp_ratios or {1.0, 2.0, full_mlp / full_width}))
        self._config = dict(
            depths=depths, widths=widths, heads=None if heads is None else sorted(set(heads)), mlp_ratios=ratios
        )
        shapes = set()
        for d, w, r in itertools.product(depths, widths, ratios):
            for h in [w // self.head_dim] if heads is None else sorted(set(heads)):
                shapes.add(SortedShape(d, w, h, round(r * w)))
        for s in shapes:
            check_shape(s, full_depth, full_width, full_heads, full_mlp, self.head_dim, tied=heads is None)
        self.eps = next((m.eps for m in vit.modules() if isinstance(m, nn.LayerNorm)), 1e-6)
        self.fused_attn = use_fused_attn()  # `unfused_attention(self)` turns this off while counting
        self.shapes: list[SortedShape] = sorted(shapes)  # re-sorted by FLOPs in `_build_subnets`

    # ---- subnets -----------------------------------------------------------------------
    @property
    def full_shape(self) -> SortedShape:
        attn = self.vit.blocks[0].attn
        return SortedShape(
            len(self.vit.blocks), self.vit.embed_dim, attn.num_heads, self.vit.blocks[0].mlp.fc1.out_features
        )

    @torch.no_grad()
    def _build_subnets(self) -> list[Subnet]:
        p = next(self.vit.parameters())
        x = torch.zeros(1, *self.input_size(), device=p.device, dtype=p.dtype)
        was_training = self.training
        self.eval()
        try:
            with unfused_attention(self):  # blocks are alike: stem + head, plus depth x one block
                ends = {w: self._count(x, SortedShape(0, w, 1, 1)) for w in {s.width for s in self.shapes}}
                one = {(s.width, s.heads, s.mlp): 0 for s in self.shapes}
                one = {k: self._count(x, SortedShape(1, *k)) - ends[k[0]] for k in one}
                flops = {s: ends[s.width] + s.depth * one[(s.width, s.heads, s.mlp)] for s in self.shapes}
        finally:
            self.train(was_training)
        self.shapes = sorted(self.shapes, key=lambda s: (flops[s], s))
        params = {s: sum(t.numel() for t in self.subnet_tensors(s).values()) for s in self.shapes}
        return [
            Subnet(i, "sorted", f"{self.name}[{s.describe()}]", flops[s], params[s]) for i, s in enumerate(self.shapes)
        ]

    def _count(self, x: torch.Tensor, s: SortedShape) -> int:
        return count_flops(self._forward_shape, x, s)[0]

    def shape(self, subnet: int | Subnet) -> SortedShape:
        """The prefix sizes of a subnet."""
        return self.shapes[self.subnet(subnet).id]

    def largest(self) -> Subnet:
        return max(self.subnets(), key=lambda s: (s.flops, s.id))

    def smallest(self) -> Subnet:
        return min(self.subnets(), key=lambda s: (s.flops, s.id))

    def subnet_tensors(self, shape: SortedShape | int | Subnet) -> dict[str, torch.Tensor]:
        """Every weight a subnet reads, by the anchor's parameter name: views, never copies.

        The qkv weight comes as a (3, h * head_dim, w) view of the anchor's (3 * A, C) matrix
        (q, k and v rows of the first h heads); everything else has the anchor's layout.
        """
        s = shape if isinstance(shape, SortedShape) else self.shape(shape)
        v, w, inner = self.vit, s.width, s.heads * self.head_dim
        out: dict[str, torch.Tensor] = {}

        def vec(prefix: str, module: nn.Module | None, n: int) -> None:
            if isinstance(module, nn.LayerNorm):
                out[f"{prefix}.weight"], out[f"{prefix}.bias"] = module.weight[:n], module.bias[:n]
            elif isinstance(module, LayerScale):
                out[f"{prefix}.gamma"] = module.gamma[:n]

        def lin(prefix: str, layer: nn.Linear, rows: int | None, cols: int | None) -> None:
            out[f"{prefix}.weight"] = layer.weight[:rows, :cols]
            if layer.bias is not None:
                out[f"{prefix}.bias"] = layer.bias[:rows]

        out["patch_embed.proj.weight"] = v.patch_embed.proj.weight[:w]
        if v.patch_embed.proj.bias is not None:
            out["patch_embed.proj.bias"] = v.patch_embed.proj.bias[:w]
        vec("patch_embed.norm", v.patch_embed.norm, w)
        for key in ("cls_token", "reg_token", "pos_embed"):
            if getattr(v, key) is not None:
                out[key] = getattr(v, key)[..., :w]
        vec("norm_pre", v.norm_pre, w)
        for i, blk in enumerate(itertools.islice(v.blocks, s.depth)):  # no new Sequential
            b = f"blocks.{i}"
            vec(f"{b}.norm1", blk.norm1, w)
            a = blk.attn
            out[f"{b}.attn.qkv.weight"] = a.qkv.weight.view(3, a.attn_dim, -1)[:, :inner, :w]
            if a.qkv.bias is not None:
                out[f"{b}.attn.qkv.bias"] = a.qkv.bias.view(3, a.attn_dim)[:, :inner]
            lin(f"{b}.attn.proj", a.proj, w, inner)
            vec(f"{b}.ls1", blk.ls1, w)
            vec(f"{b}.norm2", blk.norm2, w)
            lin(f"{b}.mlp.fc1", blk.mlp.fc1, s.mlp, w)
            vec(f"{b}.mlp.norm", blk.mlp.norm, s.mlp)
            lin(f"{b}.mlp.fc2", blk.mlp.fc2, w, s.mlp)
            vec(f"{b}.ls2", blk.ls2, w)
        vec("norm", v.norm, w)
        vec("fc_norm", v.fc_norm, w)
        lin("head", v.head, None, w)
        return out

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, subnet: int | Subnet | None = None, *, check: bool = True) -> torch.Tensor:
        """Logits of one subnet (None: the most expensive one; `check=False`: `x` already
        passed `check_input`).

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        s = self.shape(self.largest() if subnet is None else subnet)
        if check:
            self.check_input(x)
        return self._forward_shape(x, s)

    @torch.no_grad()
    def forward_all(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Logits of every subnet, sharing the blocks of subnets that differ only in depth.

        Subnets of one (width, heads, MLP) run their blocks once; each depth in the grid reads
        the head off at its block. Same arithmetic as `forward(x, subnet)` for each subnet.

        Shape:
            x: (B, C, H, W) -> {subnet id: (B, num_classes)}
        """
        self.check_input(x)
        ids = {s: i for i, s in enumerate(self.shapes)}
        groups: dict[tuple[int, int, int], list[int]] = {}
        for s in self.shapes:
            groups.setdefault((s.width, s.heads, s.mlp), []).append(s.depth)
        out = {}
        for (w, h, m), depths in groups.items():
            for d, logits in self._forward_depths(x, SortedShape(max(depths), w, h, m), depths).items():
                out[ids[SortedShape(d, w, h, m)]] = logits
        return out

    def _forward_shape(self, x: torch.Tensor, s: SortedShape) -> torch.Tensor:
        return self._forward_depths(x, s, [s.depth])[s.depth]

    def _forward_depths(self, x: torch.Tensor, s: SortedShape, depths: Sequence[int]) -> dict[int, torch.Tensor]:
        """Logits after each of `depths` blocks (all <= s.depth) of the subnet `s`."""
        t = self.subnet_tensors(s)
        v, w = self.vit, s.width
        pe = v.patch_embed
        x = F.conv2d(x, t["patch_embed.proj.weight"], t.get("patch_embed.proj.bias"), pe.proj.stride, pe.proj.padding)
        x = _norm(x.flatten(2).transpose(1, 2), t, "patch_embed.norm", w, self.eps)
        prefix = [t[k].expand(x.shape[0], -1, -1) for k in ("cls_token", "reg_token") if k in t]
        if v.no_embed_class:
            x = torch.cat([*prefix, x + t["pos_embed"]], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + t["pos_embed"]
        x = _norm(v.patch_drop(v.pos_drop(x)), t, "norm_pre", w, self.eps)
        out = {0: self._head(x, t, w)} if 0 in depths else {}
        for i, blk in enumerate(itertools.islice(v.blocks, s.depth)):  # no new Sequential
            b = f"blocks.{i}"
            a = self._attention(_norm(x, t, f"{b}.norm1", w, self.eps), blk.attn, t, b, s.heads)
            x = x + blk.drop_path1(_scale(a, t, f"{b}.ls1"))
            h = _norm(x, t, f"{b}.norm2", w, self.eps)
            h = blk.mlp.drop1(blk.mlp.act(F.linear(h, t[f"{b}.mlp.fc1.weight"], t.get(f"{b}.mlp.fc1.bias"))))
            h = F.linear(
                _norm(h, t, f"{b}.mlp.norm", s.mlp, self.eps), t[f"{b}.mlp.fc2.weight"], t.get(f"{b}.mlp.fc2.bias")
            )
            x = x + blk.drop_path2(_scale(blk.mlp.drop2(h), t, f"{b}.ls2"))
            if i + 1 in depths:
                out[i + 1] = self._head(x, t, w)
        return out

    def _head(self, x: torch.Tensor, t: dict[str, torch.Tensor], w: int) -> torch.Tensor:
        x = self.vit.pool(_norm(x, t, "norm", w, self.eps))
        x = self.vit.head_drop(_norm(x, t, "fc_norm", w, self.eps))
        return F.linear(x, t["head.weight"], t.get("head.bias"))

    def _attention(self, x: torch.Tensor, attn: Attention, t: dict[str, torch.Tensor], b: str, heads: int):
        bsz, n, _ = x.shape
        qkv_w, qkv_b = t[f"{b}.attn.qkv.weight"], t.get(f"{b}.attn.qkv.bias")
        q, k, val = (
            F.linear(x, qkv_w[j], None if qkv_b is None else qkv_b[j]).view(bsz, n, heads, -1).transpose(1, 2)
            for j in range(3)
        )
        q, k = attn.q_norm(q), attn.k_norm(k)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, val, dropout_p=attn.attn_drop.p if self.training else 0.0)
        else:
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            out = attn.attn_drop(scores.softmax(dim=-1)) @ val
        out = out.transpose(1, 2).reshape(bsz, n, heads * self.head_dim)
        return attn.proj_drop(F.linear(out, t[f"{b}.attn.proj.weight"], t.get(f"{b}.attn.proj.bias")))

    # ---- importance reordering ---------------------------------------------------------
    def reorder_by_importance(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, method: str = "taylor"
    ) -> dict[str, float]:
        """Put the most important heads, MLP units and channels first (DynaBERT / OFA), in place.

        The full network's output is unchanged (checked on `images`); see
        `elastic.builders.sorted_importance`.

        Shape:
            images: (N, C, H, W), labels: (N,)
        """
        from elastic.builders.sorted_importance import reorder_by_importance

        self.check_input(images)
        return reorder_by_importance(self.vit, images, labels, method)

    def input_size(self) -> tuple[int, int, int]:
        pe = self.vit.patch_embed
        return (pe.proj.in_channels, *pe.img_size)

    # ---- save / load -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {k: list(v) if v is not None else None for k, v in self._config.items()}

    def anchor_specs(self) -> list[dict[str, Any]]:
        if self.spec is None:
            raise CheckpointError(
                "a SortedNet over a model object cannot be rebuilt on load; "
                "build it with SortedNet.from_timm(...) or from an AnchorFamily made by AnchorFamily.from_timm"
            )
        return [self.spec.to_dict()]

    @classmethod
    def from_timm(cls, name: str, kwargs: dict[str, Any] | None = None, label: str | None = None, **grid: Any):
        """Build the anchor with timm (random weights) and the SortedNet over it."""
        spec = AnchorSpec(name, dict(kwargs or {}), label)
        return cls(create_anchor(name, False, **spec.kwargs), spec=spec, **grid)

    @classmethod
    def from_config(cls, anchors: list[dict[str, Any]], config: dict[str, Any]) -> SortedNet:
        if len(anchors) != 1:
            raise CheckpointError(f"a SortedNet has one anchor, the manifest names {len(anchors)}")
        a = anchors[0]
        return cls.from_timm(a["name"], a.get("kwargs", {}), a.get("label"), **config)


def _norm(x: torch.Tensor, t: dict[str, torch.Tensor], key: str, n: int, eps: float) -> torch.Tensor:
    """A LayerNorm over the first n channels with the first n scales and shifts (or nothing)."""
    if f"{key}.weight" not in t:
        return x
    return F.layer_norm(x, (n,), t[f"{key}.weight"], t[f"{key}.bias"], eps)


def _scale(x: torch.Tensor, t: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    gamma = t.get(f"{key}.gamma")
    return x if gamma is None else x * gamma
