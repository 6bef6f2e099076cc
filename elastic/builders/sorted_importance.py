"""Importance reordering of a SortedNet's anchor before sorted training (DynaBERT, OFA).

A SortedNet subnet keeps the *first* heads, MLP units and embedding channels, so a
pretrained anchor's prefixes start out good only once its most important pieces come first.
DynaBERT (Hou et al., NeurIPS 2020) ranks attention heads and FFN neurons by a first-order
Taylor estimate of the loss change when each is masked (Michel et al., 2019; Molchanov et
al., 2019): I = E_x |sum a * dL/da| over the piece's activations a. Once-for-All (Cai et al.,
ICLR 2020) ranks channels by the L1 norm of their weights, with no data. Both are here
("taylor" and "magnitude"); the embedding channels of the residual stream are ranked the
same way, at the input of every LayerNorm that reads the stream.

Reordering permutes heads within each block, MLP units within each block, and embedding
channels everywhere at once. Each permutation is a symmetry of the network (attention and
MLP sums are order-free, LayerNorm is permutation-equivariant), so the full network's output
does not change; `reorder_by_importance` checks that on the images it was given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)


@dataclass
class Importance:
    """Scores, higher = more important, of every sliceable piece of a ViT."""

    channels: torch.Tensor  # (C,) embedding channels
    heads: list[torch.Tensor]  # per block, (H,)
    mlp: list[torch.Tensor]  # per block, (M,) hidden units


@torch.no_grad()
def magnitude_importance(vit: VisionTransformer) -> Importance:
    """Once-for-All's data-free criterion: L1 norm of each piece's weights.

    A head scores the L1 of its q, k, v rows and its output-projection columns; an MLP unit
    its fc1 row and fc2 column; an embedding channel the L1 of every weight that reads or
    writes it, each matrix's share scaled by the matrix's mean so no one matrix dominates.
    """
    heads, mlp = [], []
    channel = torch.zeros(vit.embed_dim, device=vit.pos_embed.device)

    def add(per_channel: torch.Tensor) -> None:
        channel.add_(per_channel / per_channel.mean().clamp_min(1e-12))

    add(vit.patch_embed.proj.weight.abs().flatten(1).sum(1))
    for blk in vit.blocks:
        a = blk.attn
        qkv = a.qkv.weight.view(3, a.num_heads, a.head_dim, -1).abs()
        proj = a.proj.weight.view(-1, a.num_heads, a.head_dim).abs()
        heads.append(qkv.sum((0, 2, 3)) + proj.sum((0, 2)))
        fc1, fc2 = blk.mlp.fc1.weight.abs(), blk.mlp.fc2.weight.abs()
        mlp.append(fc1.sum(1) + fc2.sum(0))
        for per in (a.qkv.weight.abs().sum(0), a.proj.weight.abs().sum(1), fc1.sum(0), fc2.sum(1)):
            add(per)
    add(vit.head.weight.abs().sum(0))
    return Importance(channel, heads, mlp)


def taylor_importance(
    vit: VisionTransformer, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> Importance:
    """DynaBERT's criterion: mean over images of |sum a * dL/da| for each head, unit, channel.

    Heads read the attention output before the projection, MLP units the activation after
    the nonlinearity, channels the residual stream at the input of every LayerNorm that reads
    it (summed over those places). L is the cross-entropy of the labels, in eval mode.

    Shape:
        images: (N, C, H, W), labels: (N,)
    """
    depth = len(vit.blocks)
    sums: dict[str, list[torch.Tensor | None]] = {"heads": [None] * depth, "mlp": [None] * depth, "channels": [None]}
    captured: list[tuple[str, int, torch.Tensor, int]] = []  # (kind, block, activation, group size)

    def keep(kind: str, k: int, group: int):
        def hook(_module, inputs, output=None):
            act = output if output is not None else inputs[0]
            act.retain_grad()
            captured.append((kind, k, act, group))

        return hook

    handles = []
    for k, blk in enumerate(vit.blocks):
        handles.append(blk.attn.proj.register_forward_pre_hook(keep("heads", k, blk.attn.head_dim)))
        handles.append(blk.mlp.act.register_forward_hook(keep("mlp", k, 1)))
        handles.append(blk.norm1.register_forward_pre_hook(keep("channels", 0, 1)))
        handles.append(blk.norm2.register_forward_pre_hook(keep("channels", 0, 1)))
    handles.append(vit.norm.register_forward_pre_hook(keep("channels", 0, 1)))
    was_training = vit.training
    grads = [(p, p.requires_grad) for p in vit.parameters()]
    vit.eval().requires_grad_(True)
    try:
        for start in range(0, images.shape[0], batch_size):
            captured.clear()
            vit.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = F.cross_entropy(vit(images[start : start + batch_size]), labels[start : start + batch_size])
            loss.backward()
            for kind, k, act, group in captured:
                per_sample = (act.detach() * act.grad).sum(1)  # (B, width): summed over tokens
                score = per_sample.view(per_sample.shape[0], -1, group).sum(-1).abs().sum(0).detach()
                sums[kind][k] = score if sums[kind][k] is None else sums[kind][k] + score
    finally:
        for h in handles:
            h.remove()
        vit.zero_grad(set_to_none=True)
        vit.train(was_training)
        for p, flag in grads:
            p.requires_grad_(flag)
    n = images.shape[0]
    return Importance(sums["channels"][0] / n, [s / n for s in sums["heads"]], [s / n for s in sums["mlp"]])


@torch.no_grad()
def reorder_(vit: VisionTransformer, importance: Importance) -> None:
    """Permute `vit`'s weights in place so every piece comes in descending importance.

    Storage stays where it was (values are copied back into the same tensors).
    """
    order = torch.argsort(importance.channels, descending=True, stable=True)
    _permute_channels(vit, order.to(vit.pos_embed.device))
    for blk, h_score, m_score in zip(vit.blocks, importance.heads, importance.mlp, strict=True):
        a, mlp = blk.attn, blk.mlp
        heads = torch.argsort(h_score, descending=True, stable=True).to(a.qkv.weight.device)
        _take(a.qkv.weight.view(3, a.num_heads, a.head_dim, -1), 1, heads)
        if a.qkv.bias is not None:
            _take(a.qkv.bias.view(3, a.num_heads, a.head_dim), 1, heads)
        _take(a.proj.weight.view(-1, a.num_heads, a.head_dim), 1, heads)
        units = torch.argsort(m_score, descending=True, stable=True).to(mlp.fc1.weight.device)
        _take(mlp.fc1.weight, 0, units)
        if mlp.fc1.bias is not None:
            _take(mlp.fc1.bias, 0, units)
        _take_norm(mlp.norm, units)
        _take(mlp.fc2.weight, 1, units)


def reorder_by_importance(
    vit: VisionTransformer,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    method: str = "taylor",
    tolerance: float = 1e-4,
) -> dict[str, float]:
    """Score (`method`: "taylor" needs labels, "magnitude" does not) and reorder in place.

    Returns:
        {"max_logit_change": the full network's largest absolute logit change on `images`
        (a symmetry: float rounding only)}; raises RuntimeError beyond `tolerance`.

    Shape:
        images: (N, C, H, W), labels: (N,)
    """
    was_training = vit.training
    vit.eval()
    with torch.no_grad():
        before = vit(images)
    if method == "taylor":
        if labels is None:
            raise ValueError("taylor importance needs labels")
        importance = taylor_importance(vit, images, labels)
    elif method == "magnitude":
        importance = magnitude_importance(vit)
    else:
        raise ValueError(f"unknown importance method {method!r}; use 'taylor' or 'magnitude'")
    reorder_(vit, importance)
    with torch.no_grad():
        change = float((vit(images) - before).abs().max())
    vit.train(was_training)
    if change > tolerance:
        raise RuntimeError(f"reordering changed the full network's logits by {change:.3g}: a weight was missed")
    log.info("reordered heads, MLP units and channels by %s importance; logits moved %.2e", method, change)
    return {"max_logit_change": change}


def _take(t: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    t.copy_(t.index_select(dim, index))


def _take_norm(norm: nn.Module, index: torch.Tensor) -> None:
    if isinstance(norm, nn.LayerNorm):
        _take(norm.weight, 0, index)
        _take(norm.bias, 0, index)


def _permute_channels(vit: VisionTransformer, order: torch.Tensor) -> None:
    """Reorder the embedding channels of every tensor that reads or writes the residual stream."""
    pe = vit.patch_embed
    _take(pe.proj.weight, 0, order)
    if pe.proj.bias is not None:
        _take(pe.proj.bias, 0, order)
    for norm in (pe.norm, vit.norm_pre, vit.norm, vit.fc_norm):
        _take_norm(norm, order)
    for name in ("cls_token", "reg_token", "pos_embed"):
        t = getattr(vit, name)
        if t is not None:
            _take(t, t.dim() - 1, order)
    for blk in vit.blocks:
        _take_norm(blk.norm1, order)
        _take_norm(blk.norm2, order)
        _take(blk.attn.qkv.weight, 1, order)
        _take(blk.attn.proj.weight, 0, order)
        if blk.attn.proj.bias is not None:
            _take(blk.attn.proj.bias, 0, order)
        _take(blk.mlp.fc1.weight, 1, order)
        _take(blk.mlp.fc2.weight, 0, order)
        if blk.mlp.fc2.bias is not None:
            _take(blk.mlp.fc2.bias, 0, order)
        for ls in (blk.ls1, blk.ls2):
            if hasattr(ls, "gamma"):
                _take(ls.gamma, 0, order)
    _take(vit.head.weight, 1, order)
