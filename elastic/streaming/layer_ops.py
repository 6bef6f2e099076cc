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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elastic.errors import UnsupportedArchitecture


def check_layer(layer: nn.Module) -> nn.TransformerEncoderLayer:
    """Reject torch layers the continual layers cannot stream exactly."""
    if not isinstance(layer, nn.TransformerEncoderLayer):
        raise UnsupportedArchitecture(f"expected nn.TransformerEncoderLayer, got {type(layer).__name__}")
    if not layer.self_attn._qkv_same_embed_dim:
        raise UnsupportedArchitecture("self-attention with kdim/vdim != embed_dim")
    return layer


def _weights(layer: nn.TransformerEncoderLayer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    attn = layer.self_attn
    return attn.in_proj_weight, attn.out_proj.weight, layer.linear1.weight, layer.linear2.weight


class StepWeights:
    """The layer's four weight matrices transposed `(in, out)`, for `x @ w_t` products.

    With grad enabled: views of the live parameters. Without: contiguous copies, made on first
    use and again whenever a weight's storage or version changes (`load_state_dict`, `.to()`,
    in-place edits), so they never go stale.
    """

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        self.layer = layer
        self._key: tuple | None = None
        self._copies: tuple[Tensor, ...] = ()

    def get(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`(in_proj, out_proj, linear1, linear2)` weights, each `(in_features, out_features)`."""
        ws = _weights(self.layer)
        if torch.is_grad_enabled():
            return tuple(w.t() for w in ws)  # type: ignore[return-value]
        key = tuple((w.data_ptr(), w._version, w.dtype) for w in ws)
        if key != self._key:
            with torch.inference_mode(False):  # plain tensors: usable with or without inference mode
                self._copies = tuple(w.detach().t().contiguous() for w in ws)
            self._key = key
        return self._copies  # type: ignore[return-value]


def affine(x: Tensor, w_t: Tensor, bias: Tensor | None) -> Tensor:
    """`x @ w_t + bias` over the last dim in one op. Shape: `(..., K)` -> `(..., N)`."""
    if x.dim() == 2:
        return torch.addmm(bias, x, w_t) if bias is not None else torch.mm(x, w_t)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.addmm(bias, flat, w_t) if bias is not None else torch.mm(flat, w_t)
    return out.view(*x.shape[:-1], w_t.shape[1])


def _slice(bias: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if bias is None else bias[start:stop]


def attn_input(layer: nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    """What the layer's attention sees of tokens x: norm1(x) in pre-norm layers, x otherwise."""
    if not layer.norm_first:
        return x
    n = layer.norm1
    return F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps)


def qkv(layer: nn.TransformerEncoderLayer, w: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """Query, key and value of tokens, concatenated. Shape: `(..., C)` -> `(..., 3C)`."""
    return affine(attn_input(layer, x), w[0], layer.self_attn.in_proj_bias)


def kv(layer: nn.TransformerEncoderLayer, w: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """Key and value of tokens only (no query). Shape: `(..., C)` -> `(..., 2C)`."""
    c = x.shape[-1]
    return affine(attn_input(layer, x), w[0][:, c:], _slice(layer.self_attn.in_proj_bias, c, 3 * c))


def query(layer: nn.TransformerEncoderLayer, w: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """Query of tokens only. Shape: `(..., C)` -> `(..., C)`."""
    c = x.shape[-1]
    return affine(attn_input(layer, x), w[0][:, :c], _slice(layer.self_attn.in_proj_bias, 0, c))


def softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention of heads folded into the batch.

    Shape:
        q: `(N, Lq, dh)`, k and v: `(N, Lk, dh)` -> `(N, Lq, dh)`.
    """
    scores = torch.bmm(q, k.transpose(1, 2)).mul_(q.shape[-1] ** -0.5)
    return torch.bmm(scores.softmax(dim=-1), v)


def out_and_tail(layer: nn.TransformerEncoderLayer, w: tuple[Tensor, ...], x: Tensor, o: Tensor) -> Tensor:
    """Output projection of the attention `o`, then residuals, norms and the feed-forward block.

    Shape:
        x (the layer's input tokens) and o (their attention outputs, heads merged): `(..., C)` -> `(..., C)`.
    """
    a = affine(o, w[1], layer.self_attn.out_proj.bias)
    n1, n2 = layer.norm1, layer.norm2
    if layer.norm_first:
        h = x + a
        f = F.layer_norm(h, n2.normalized_shape, n2.weight, n2.bias, n2.eps)
        return h + _feed_forward(layer, w, f)
    h = F.layer_norm(x + a, n1.normalized_shape, n1.weight, n1.bias, n1.eps)
    return F.layer_norm(h + _feed_forward(layer, w, h), n2.normalized_shape, n2.weight, n2.bias, n2.eps)


def _feed_forward(layer: nn.TransformerEncoderLayer, w: tuple[Tensor, ...], h: Tensor) -> Tensor:
    hidden = affine(h, w[2], layer.linear1.bias)
    hidden = torch.relu_(hidden) if layer.activation is F.relu else layer.activation(hidden)
    return affine(hidden, w[3], layer.linear2.bias)


def full_layer(layer: nn.TransformerEncoderLayer, w: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """The whole layer over windows (every query attends to every token of its window).

    Shape:
        x: `(B, n, C)` -> `(B, n, C)`; the layer is permutation-equivariant over the n tokens.
    """
    b, n, c = x.shape
    heads = layer.self_attn.num_heads
    dh = c // heads
    t = qkv(layer, w, x).view(b, n, 3, heads, dh).permute(2, 0, 3, 1, 4).reshape(3, b * heads, n, dh)
    o = softmax_attention(t[0], t[1], t[2]).view(b, heads, n, dh).transpose(1, 2).reshape(b, n, c)
    return out_and_tail(layer, w, x, o)


def last_query_layer(layer: nn.TransformerEncoderLayer, w: tuple[Tensor, ...], x: Tensor, last: Tensor) -> Tensor:
    """The layer's output for one token of each window, its query over all the window's tokens.

    Args:
        x: the windows' tokens, any order (attention of one query does not depend on the keys' order).
        last: the token whose output is wanted, one per window (a row of x).

    Shape:
        x: `(B, n, C)`, last: `(B, C)` -> `(B, C)`.
    """
    b, n, c = x.shape
    heads = layer.self_attn.num_heads
    dh = c // heads
    keys_values = kv(layer, w, x).view(b, n, 2, heads, dh).permute(2, 0, 3, 1, 4).reshape(2, b * heads, n, dh)
    q = query(layer, w, last).view(b * heads, 1, dh)
    o = softmax_attention(q, keys_values[0], keys_values[1]).view(b, c)
    return out_and_tail(layer, w, last, o)
