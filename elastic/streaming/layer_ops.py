"""The eval-mode computation of one `nn.TransformerEncoderLayer`, as lean calls on token tensors.

The continual encoder layers (Hedegaard, Bakhtiarnia & Iosifidis, "Continual Transformers:
Redundancy-Free Attention for Online Inference", ICLR 2023) run pieces of a torch layer on a
few tokens per step: the new token's projections, one query's attention, the feed-forward
block of one token. At batch 1 those are matrix-vector products whose cost is reading the
weights, plus a few microseconds of dispatch per op, so this file keeps the op count low
(one `addmm` per projection, `bmm` attention, no `nn.Module.__call__`) and, with grad off,
multiplies by contiguous transposed copies of the weights: on the 2-core development CPU a
`(1, 256) @ (256, 768)` product ran 1.5-1.7x faster that way than `F.linear`'s `x @ W.T`
when other work had just run (the cache-cold case every interleaved benchmark measures).
The copies (`StepWeights`) are refreshed whenever a weight changes (in place or replaced),
and with grad on the live parameters are used, so autograd through a step still works.

Dropout is skipped: these are eval-mode computations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from elastic.errors import UnsupportedArchitecture


def check_layer(layer: nn.Module) -> nn.TransformerEncoderLayer:
    """Reject torch layers the continual layers cannot stream exactly."""
    if not isinstance(layer, nn.TransformerEncoderLayer):
        raise UnsupportedArchitecture(f"expected nn.TransformerEncoderLayer, got {type(layer).__name__}")
    if not layer.self_attn._qkv_same_embed_dim:
        raise UnsupportedArchitecture("self-attention with kdim/vdim != embed_dim")
    return layer


_registrations = 0  # parameters (re)assigned on any module since import: a stale-cache guard


def _count_registration(module: nn.Module, name: str, param: Tensor | None) -> None:
    global _registrations
    _registrations += 1


register_module_parameter_registration_hook(_count_registration)


class LayerParams(NamedTuple):
    """Everything a step reads from one layer, in one flat tuple (no `nn.Module` attribute lookups)."""

    qkv_t: Tensor  # (C, 3C) in_proj weight, transposed
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
    activation: Callable[[Tensor], Tensor]
    heads: int


def _norm(n: nn.LayerNorm) -> tuple:
    return (n.normalized_shape, n.weight, n.bias, n.eps)


def _params(layer: nn.TransformerEncoderLayer, transposed: Sequence[Tensor]) -> LayerParams:
    attn = layer.self_attn
    return LayerParams(
        transposed[0],
        attn.in_proj_bias,
        transposed[1],
        attn.out_proj.bias,
        transposed[2],
        layer.linear1.bias,
        transposed[3],
        layer.linear2.bias,
        _norm(layer.norm1),
        _norm(layer.norm2),
        bool(layer.norm_first),
        layer.activation is F.relu,
        layer.activation,
        attn.num_heads,
    )


def _weights(layer: nn.TransformerEncoderLayer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    attn = layer.self_attn
    return attn.in_proj_weight, attn.out_proj.weight, layer.linear1.weight, layer.linear2.weight


class StepWeights:
    """A layer's `LayerParams`, its four weight matrices transposed `(in, out)` for `x @ w_t` products.

    With grad enabled: views of the live parameters, read afresh. Without: contiguous copies,
    made on first use and again whenever a weight's storage or version changes
    (`load_state_dict`, `.to()`, in-place edits) or any parameter is assigned anew, so they
    never go stale; the other parameters are held by reference (in-place edits show).
    """

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        self.layer = layer
        self._key: tuple | None = None
        self._refs: tuple[Tensor, ...] = ()
        self._params: LayerParams | None = None

    def _current_key(self) -> tuple:
        return (_registrations, *((w.data_ptr(), w._version, w.dtype) for w in self._refs))

    def get(self) -> LayerParams:
        if torch.is_grad_enabled():
            return _params(self.layer, [w.t() for w in _weights(self.layer)])
        if self._params is None or self._key != self._current_key():
            self._refs = _weights(self.layer)
            with torch.inference_mode(False):  # plain tensors: usable with or without inference mode
                copies = [w.detach().t().contiguous() for w in self._refs]
            self._params = _params(self.layer, copies)
            self._key = self._current_key()
        return self._params


def affine(x: Tensor, w_t: Tensor, bias: Tensor | None) -> Tensor:
    """`x @ w_t + bias` over the last dim in one op. Shape: `(..., K)` -> `(..., N)`."""
    if x.dim() == 2:
        return torch.addmm(bias, x, w_t) if bias is not None else torch.mm(x, w_t)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.addmm(bias, flat, w_t) if bias is not None else torch.mm(flat, w_t)
    return out.view(*x.shape[:-1], w_t.shape[1])


def _slice(bias: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if bias is None else bias[start:stop]


def attn_input(p: LayerParams, x: Tensor) -> Tensor:
    """What the layer's attention sees of tokens x: norm1(x) in pre-norm layers, x otherwise."""
    return F.layer_norm(x, *p.norm1) if p.norm_first else x


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
        h = x + a
        return h + _feed_forward(p, F.layer_norm(h, *p.norm2))
    h = F.layer_norm(x + a, *p.norm1)
    return F.layer_norm(h + _feed_forward(p, h), *p.norm2)


def _feed_forward(p: LayerParams, h: Tensor) -> Tensor:
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
    keys_values = kv(p, x).view(b, n, 2, p.heads, dh).permute(2, 0, 3, 1, 4).reshape(2, b * p.heads, n, dh)
    o = softmax_attention(query(p, last).view(b * p.heads, 1, dh), keys_values[0], keys_values[1]).view(b, c)
    return out_and_tail(p, last, o)
