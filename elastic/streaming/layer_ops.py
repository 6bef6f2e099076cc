"""The eval-mode computation of one `nn.TransformerEncoderLayer`, as lean calls on token tensors.

The continual encoder layers (Hedegaard, Bakhtiarnia & Iosifidis, "Continual Transformers:
Redundancy-Free Attention for Online Inference", ICLR 2023) run pieces of a torch layer on a
few tokens per step: the new token's projections, one query's attention, the feed-forward
block of one token. At batch 1 those are matrix-vector products whose cost is reading the
weights (~3 MiB at d 256, ff 1024: more than a core's L2), plus a few microseconds of
dispatch per op, so this file keeps the op count low: one `addmm` per projection (on a
transposed view of the weight: `F.linear`'s own product, minus two dispatches), one
`scaled_dot_product_attention` for the new token's query, linear1 and a ReLU in one
`_addmm_activation` (inference only: it has no derivative), no `nn.Module.__call__`. The
products read the layer's own parameters: the same bytes the torch model reads, so a step
run right after the offline model finds them in cache. Contiguous transposed copies (kept
until 2026-11-30, refreshed through a process-wide parameter-registration hook) made the
product faster in isolation, but measured interleaved against recomputing the window they
gave the lean step nothing on the 2-core development CPU (bench/streaming.py's per-step
timing, copies vs views, several runs each way: no faster 8 in a row, slower alternating)
and doubled the bytes in cache. Norms call `torch.layer_norm` (F.layer_norm's Python
wrapper costs ~0.5 us a call).

A step reads the parameters from one cached `LayerParams` tuple (no `nn.Module` attribute
lookups); `LayerParamsCache` rebuilds it when a parameter or submodule of the layer is
assigned anew or a weight's storage moves.

Dropout is skipped: these are eval-mode computations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import flop_counter

from elastic.errors import UnsupportedArchitecture

if torch.ops.aten._addmm_activation not in flop_counter.flop_registry:
    # torch's FLOP counter has no formula for the fused linear + ReLU (it would count 0): it is an addmm
    flop_counter.register_flop_formula(torch.ops.aten._addmm_activation, get_raw=True)(flop_counter.addmm_flop)


def check_layer(layer: nn.Module) -> nn.TransformerEncoderLayer:
    """Reject torch layers the continual layers cannot stream exactly."""
    if not isinstance(layer, nn.TransformerEncoderLayer):
        raise UnsupportedArchitecture(f"expected nn.TransformerEncoderLayer, got {type(layer).__name__}")
    if not layer.self_attn._qkv_same_embed_dim:
        raise UnsupportedArchitecture("self-attention with kdim/vdim != embed_dim")
    return layer


class LayerParams(NamedTuple):
    """Everything a step reads from one layer, in one flat tuple (no `nn.Module` attribute lookups)."""

    qkv_t: Tensor  # (C, 3C) in_proj weight, a transposed view (no copy) for `addmm(b, x, w_t)`
    qkv_b: Tensor | None  # (3C,)
    out_t: Tensor  # (C, C)
    out_b: Tensor | None
    ff1_t: Tensor  # (C, F)
    ff1_b: Tensor | None
    ff2_t: Tensor  # (F, C)
    ff2_b: Tensor | None
    norm1: tuple  # (normalized_shape, weight, bias, eps)
    norm2: tuple
    norm_first: bool
    relu: bool  # the activation is F.relu (run in place)
    no_grad: bool  # built with grad off (the cached tuple): in-place state writes and no-derivative ops allowed
    fused_relu: bool  # relu, a linear1 bias and no_grad: linear1 + ReLU as one `_addmm_activation`
    activation: Callable[[Tensor], Tensor]
    heads: int


def _norm(n: nn.LayerNorm) -> tuple:
    return (n.normalized_shape, n.weight, n.bias, n.eps)


def _params(layer: nn.TransformerEncoderLayer) -> LayerParams:
    attn = layer.self_attn
    return LayerParams(
        attn.in_proj_weight.t(),
        attn.in_proj_bias,
        attn.out_proj.weight.t(),
        attn.out_proj.bias,
        layer.linear1.weight.t(),
        layer.linear1.bias,
        layer.linear2.weight.t(),
        layer.linear2.bias,
        _norm(layer.norm1),
        _norm(layer.norm2),
        bool(layer.norm_first),
        layer.activation is F.relu,
        not torch.is_grad_enabled(),
        # `_addmm_activation` has no derivative: with grad on, `get` builds a tuple without it
        layer.activation is F.relu and layer.linear1.bias is not None and not torch.is_grad_enabled(),
        layer.activation,
        attn.num_heads,
    )


def _slots(layer: nn.TransformerEncoderLayer) -> list[tuple[dict, str, object]]:
    """`(registry, name, object)` for every submodule and parameter a step reads: a stale-cache key."""
    attn = layer.self_attn
    out = [
        (layer._modules, name, layer._modules[name]) for name in ("self_attn", "linear1", "linear2", "norm1", "norm2")
    ]
    out.append((attn._modules, "out_proj", attn.out_proj))
    for module, names in (
        (attn, ("in_proj_weight", "in_proj_bias")),
        (attn.out_proj, ("weight", "bias")),
        (layer.linear1, ("weight", "bias")),
        (layer.linear2, ("weight", "bias")),
        (layer.norm1, ("weight", "bias")),
        (layer.norm2, ("weight", "bias")),
    ):
        out += [(module._parameters, name, module._parameters.get(name)) for name in names]
    return out


def _weights(layer: nn.TransformerEncoderLayer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    attn = layer.self_attn
    return attn.in_proj_weight, attn.out_proj.weight, layer.linear1.weight, layer.linear2.weight


class LayerParamsCache:
    """A layer's `LayerParams`, rebuilt when a parameter or submodule is assigned anew or a weight moves.

    The tuple holds the live parameters and views of them (no copies), so in-place edits and
    `load_state_dict` show at once. A rebuild happens when a registry entry is not the object
    seen when the tuple was built (`layer.linear1.weight = nn.Parameter(...)`,
    `layer.linear1 = nn.Linear(...)`) or a weight's storage changed (`.to()`, which swaps `.data`
    under the same `Parameter`). With grad enabled the tuple is built afresh, so its transposed
    views carry autograd to the parameters.
    """

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        self.layer = layer
        self._slots: list[tuple[dict, str, object]] = []
        self._weights: tuple[Tensor, ...] = ()
        self._ptrs: list[int] = []
        self._params: LayerParams | None = None

    def _stale(self) -> bool:
        return not all([registry.get(name) is obj for registry, name, obj in self._slots]) or self._ptrs != [
            w.data_ptr() for w in self._weights
        ]

    def get(self) -> LayerParams:
        if torch.is_grad_enabled():
            return _params(self.layer)
        params = self._params
        if params is None or self._stale():
            weights = _weights(self.layer)
            try:
                ptrs = [w.data_ptr() for w in weights]
            except RuntimeError:  # weights without storage (fake tensors while torch.export traces): no cache
                return _params(self.layer)
            self._slots, self._weights, self._ptrs = _slots(self.layer), weights, ptrs
            params = self._params = _params(self.layer)
        return params


def affine(x: Tensor, w_t: Tensor, bias: Tensor | None) -> Tensor:
    """`x @ w_t + bias` over the last dim, one `addmm` (what `F.linear` runs, without its dispatch).

    Shape:
        x: `(..., K)`, w_t: `(K, N)` -> `(..., N)`.
    """
    if x.dim() == 2:
        return torch.addmm(bias, x, w_t) if bias is not None else torch.mm(x, w_t)
    out = affine(x.reshape(-1, x.shape[-1]), w_t, bias)
    return out.view(*x.shape[:-1], w_t.shape[1])


def _slice(bias: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if bias is None else bias[start:stop]


def attn_input(p: LayerParams, x: Tensor) -> Tensor:
    """What the layer's attention sees of tokens x: norm1(x) in pre-norm layers, x otherwise."""
    return torch.layer_norm(x, *p.norm1) if p.norm_first else x


def qkv(p: LayerParams, x: Tensor) -> Tensor:
    """Query, key and value of tokens, concatenated. Shape: `(..., C)` -> `(..., 3C)`."""
    return affine(attn_input(p, x), p.qkv_t, p.qkv_b)


def kv(p: LayerParams, x: Tensor) -> Tensor:
    """Key and value of tokens only (no query). Shape: `(..., C)` -> `(..., 2C)`."""
    c = x.shape[-1]
    return affine(attn_input(p, x), p.qkv_t[:, c:], _slice(p.qkv_b, c, 3 * c))


def query(p: LayerParams, x: Tensor) -> Tensor:
    """Query of tokens only. Shape: `(..., C)` -> `(..., C)`."""
    c = x.shape[-1]
    return affine(attn_input(p, x), p.qkv_t[:, :c], _slice(p.qkv_b, 0, c))


def softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention of heads folded into the batch.

    Shape:
        q: `(N, Lq, dh)`, k and v: `(N, Lk, dh)` -> `(N, Lq, dh)`.
    """
    scores = torch.bmm(q, k.transpose(1, 2)).mul_(q.shape[-1] ** -0.5)
    return torch.bmm(scores.softmax(dim=-1), v)


def out_and_tail(p: LayerParams, x: Tensor, o: Tensor) -> Tensor:
    """Output projection of the attention `o`, then residuals, norms and the feed-forward block.

    Shape:
        x (the layer's input tokens) and o (their attention outputs, heads merged): `(..., C)` -> `(..., C)`.
    """
    a = affine(o, p.out_t, p.out_b)
    if p.norm_first:
        h = a.add_(x)  # a is a fresh product: no allocation for the residual
        return _feed_forward(p, torch.layer_norm(h, *p.norm2)).add_(h)
    h = torch.layer_norm(a.add_(x), *p.norm1)
    return torch.layer_norm(_feed_forward(p, h).add_(h), *p.norm2)


def _feed_forward(p: LayerParams, h: Tensor) -> Tensor:
    """linear2(activation(linear1(h))); with ReLU, the first product and the ReLU are one
    `_addmm_activation` where `p.fused_relu` allows (torch's own op: the same addmm, then relu, one dispatch fewer)."""
    if p.fused_relu and h.dim() == 2:
        hidden = torch._addmm_activation(p.ff1_b, h, p.ff1_t)
    else:
        hidden = affine(h, p.ff1_t, p.ff1_b)
        hidden = torch.relu_(hidden) if p.relu else p.activation(hidden)
    return affine(hidden, p.ff2_t, p.ff2_b)


def full_layer(p: LayerParams, x: Tensor) -> Tensor:
    """The whole layer over windows (every query attends to every token of its window).

    Shape:
        x: `(B, n, C)` -> `(B, n, C)`; the layer is permutation-equivariant over the n tokens.
    """
    b, n, c = x.shape
    dh = c // p.heads
    t = qkv(p, x).view(b, n, 3, p.heads, dh).permute(2, 0, 3, 1, 4).reshape(3, b * p.heads, n, dh)
    o = softmax_attention(t[0], t[1], t[2]).view(b, p.heads, n, dh).transpose(1, 2).reshape(b, n, c)
    return out_and_tail(p, x, o)


def last_query_layer(p: LayerParams, x: Tensor, last: Tensor) -> Tensor:
    """The layer's output for one token of each window, its query over all the window's tokens.

    Args:
        x: the windows' tokens, any order (attention of one query does not depend on the keys' order).
        last: the token whose output is wanted, one per window (a row of x).

    Shape:
        x: `(B, n, C)`, last: `(B, C)` -> `(B, C)`.
    """
    b, n, c = x.shape
    dh = c // p.heads
    # bmm on contiguous heads: sdpa on the permuted (strided) view made a 64-stream tick ~7 % slower
    keys_values = kv(p, x).view(b, n, 2, p.heads, dh).permute(2, 0, 3, 1, 4).reshape(2, b * p.heads, n, dh)
    o = softmax_attention(query(p, last).view(b * p.heads, 1, dh), keys_values[0], keys_values[1]).view(b, c)
    return out_and_tail(p, last, o)
