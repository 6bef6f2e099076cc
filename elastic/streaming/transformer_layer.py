"""Continual transformer encoder layers: single-output and retroactive attention over a sliding window.

Continual Transformers (Hedegaard, Bakhtiarnia & Iosifidis, "Continual Transformers:
Redundancy-Free Attention for Online Inference", ICLR 2023). The offline model is an
`nn.TransformerEncoderLayer` applied to every window of the last `window` tokens. Stepping
keeps the keys and values (and, for the retroactive layer, queries and inputs) of the
window's earlier tokens, so a step projects only the new token:

- `SingleOutputEncoderLayer`: only the newest token's output, `O(n d)` attention plus one
  token through the feed-forward block — the paper's Continual Single-Output layer. Its keys
  and values sit in a ring (step t writes slot t mod n, out of place), since one query's
  softmax attention does not depend on the order of the keys.
- `RetroactiveEncoderLayer`: every token of the window, updated for the new key. The paper
  updates running softmax numerators/denominators (`O(n d)`); here the window's scores are
  recomputed from the cached queries and keys (`O(n^2 d)`), which is exact and cannot
  cancel catastrophically when a dominant key leaves the window. Either way every token's
  output changes, so the feed-forward block runs on all `n` tokens and dominates the cost.

Any activation of the torch layer runs as is (continual-inference 1.2.4 turns "gelu" into
ReLU), and pre-norm (`norm_first=True`) layers stream too. Masks are not supported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elastic.errors import UnsupportedArchitecture

from .base import PhaseCounter, State, StreamingModule, keep_rows, param_device_dtype


def check_layer(layer: nn.Module) -> nn.TransformerEncoderLayer:
    """Reject torch layers this module cannot stream exactly."""
    if not isinstance(layer, nn.TransformerEncoderLayer):
        raise UnsupportedArchitecture(f"expected nn.TransformerEncoderLayer, got {type(layer).__name__}")
    if not layer.self_attn._qkv_same_embed_dim:
        raise UnsupportedArchitecture("self-attention with kdim/vdim != embed_dim")
    return layer


def project(layer: nn.TransformerEncoderLayer, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Query, key and value of tokens (the input of attention, i.e. after norm1 in pre-norm layers).

    Shape:
        x: `(..., C)` -> three `(..., C)`.
    """
    attn = layer.self_attn
    return F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)


def attend(layer: nn.TransformerEncoderLayer, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Multi-head softmax attention of queries over keys/values, then the output projection.

    Shape:
        q: `(B, Lq, C)`, k and v: `(B, Lk, C)` -> `(B, Lq, C)`.
    """
    attn = layer.self_attn
    h = attn.num_heads
    b, lq, c = q.shape
    dh = c // h
    q = q.view(b, lq, h, dh).transpose(1, 2)
    k = k.view(b, -1, h, dh).transpose(1, 2)
    v = v.view(b, -1, h, dh).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (dh**-0.5)
    out = torch.matmul(scores.softmax(dim=-1), v)  # (B, h, Lq, dh)
    return attn.out_proj(out.transpose(1, 2).reshape(b, lq, c))


def tail(layer: nn.TransformerEncoderLayer, x: Tensor, a: Tensor) -> Tensor:
    """The rest of the layer after attention: residuals, norms and the feed-forward block.

    Shape:
        x (the layer's input tokens) and a (their attention outputs): `(..., C)` -> `(..., C)`.
    """

    def ff(h: Tensor) -> Tensor:  # eval only: the layer's dropouts are identities and skipped
        return layer.linear2(layer.activation(layer.linear1(h)))

    if layer.norm_first:
        h = x + a
        return h + ff(layer.norm2(h))
    h = layer.norm1(x + a)
    return layer.norm2(h + ff(h))


def attn_input(layer: nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    """What the layer's attention sees of tokens x: norm1(x) in pre-norm layers, x otherwise."""
    return layer.norm1(x) if layer.norm_first else x


def full_layer(layer: nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    """The whole layer over a window (every query). Shape: `(B, n, C)` -> `(B, n, C)`."""
    q, k, v = project(layer, attn_input(layer, x))
    return tail(layer, x, attend(layer, q, k, v))


def last_query_layer(layer: nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    """The layer's output for the window's last token only. Shape: `(B, n, C)` -> `(B, C)`."""
    xa = attn_input(layer, x)
    q, _, _ = project(layer, xa[:, -1:])
    _, k, v = project(layer, xa)
    return tail(layer, x[:, -1], attend(layer, q, k, v)[:, 0])


def torch_layer_on_windows(layer: nn.TransformerEncoderLayer, windows: Tensor) -> Tensor:
    """The torch layer's own forward on batch-first windows. Shape: `(N, n, C)` -> `(N, n, C)`."""
    if layer.self_attn.batch_first:
        return layer(windows)
    return layer(windows.transpose(0, 1)).transpose(0, 1)


def windows_of(x: Tensor, window: int) -> Tensor:
    """Every window of `window` consecutive frames, batch first.

    Shape:
        x: `(B, C, T)` -> `(B * (T - window + 1), window, C)`, windows of a row consecutive.
    """
    return x.unfold(2, window, 1).permute(0, 2, 3, 1).flatten(0, 1)


class _WindowLayer(StreamingModule):
    """Geometry shared by the window layers: delay `window - 1`, receptive field `window`."""

    def __init__(self, layer: nn.TransformerEncoderLayer, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.layer = check_layer(layer)
        self.window = window

    def extra_repr(self) -> str:
        return f"window={self.window}"

    @property
    def d_model(self) -> int:
        return self.layer.self_attn.embed_dim

    @property
    def delay(self) -> int:
        return self.window - 1

    @property
    def receptive_field(self) -> int:
        return self.window

    def _cache(self, batch: int, device, dtype, names: Sequence[str]) -> State:
        dev, dt = param_device_dtype(self, device, dtype)
        state = {n: torch.zeros(batch, self.window - 1, self.d_model, device=dev, dtype=dt) for n in names}
        state["t"] = PhaseCounter.init(batch, dev)
        return state


class SingleOutputEncoderLayer(_WindowLayer):
    """An `nn.TransformerEncoderLayer` over a sliding window that outputs the newest token.

    Args:
        layer: the torch layer (its weights are shared, not copied); dropout is ignored (eval).
        window: tokens per window `n`.

    Offline, `forward` runs the torch layer on every window and keeps each window's last token.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Shape: `(B, C, T)` -> `(B, C, T - window + 1)`."""
        b, t = x.shape[0], x.shape[2] - self.window + 1
        if t <= 0:
            return x.new_zeros(b, x.shape[1], 0)
        y = torch_layer_on_windows(self.layer, windows_of(x, self.window))[:, -1]
        return y.unflatten(0, (b, t)).transpose(1, 2)

    def init_state(self, batch, frame_shape, *, device=None, dtype=None) -> State:
        dev, dt = param_device_dtype(self, device, dtype)
        h = self.layer.self_attn.num_heads
        # keys and values of the window's tokens in heads, a ring: step t writes slot t mod n. (B, 2, h, n, C / h)
        kv = torch.zeros(batch, 2, h, self.window, self.d_model // h, device=dev, dtype=dt)
        return {"kv": kv, "t": PhaseCounter.init(batch, dev)}

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        layer, kv, t = self.layer, state["kv"], state["t"]
        b, _, h, n, dh = kv.shape
        qkv = F.linear(attn_input(layer, x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias)
        q = qkv[:, : h * dh].view(b, h, 1, dh)  # one token: splitting heads is a view, no transpose
        slot = (t % n).view(b, 1, 1, 1, 1).expand(b, 2, h, 1, dh)
        # out of place (the caller's state stays valid); one contiguous copy instead of shifting the window
        kv = kv.scatter(3, slot, qkv[:, h * dh :].view(b, 2, h, 1, dh))
        # the last query attends to the whole window; softmax attention does not depend on the keys' order
        a = F.scaled_dot_product_attention(q, kv[:, 0], kv[:, 1])  # (B, h, 1, dh)
        y = tail(layer, x, layer.self_attn.out_proj(a.reshape(b, h * dh)))
        ready, t_next = PhaseCounter.advance(t, valid, self.delay, 1)
        return y, ready, keep_rows(valid, {"kv": kv, "t": t_next}, state)


class RetroactiveEncoderLayer(_WindowLayer):
    """An `nn.TransformerEncoderLayer` over a sliding window that outputs the whole updated window.

    Args:
        layer: the torch layer (weights shared); dropout is ignored (eval).
        window: tokens per window `n`.

    Each step's output is the layer's output for the last `n` tokens, oldest first, so the
    offline `forward` returns one window per output step.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Shape: `(B, C, T)` -> `(B, C, T - window + 1, window)`."""
        b, t = x.shape[0], x.shape[2] - self.window + 1
        if t <= 0:
            return x.new_zeros(b, x.shape[1], 0, self.window)
        y = torch_layer_on_windows(self.layer, windows_of(x, self.window))  # (B*t, n, C)
        return y.unflatten(0, (b, t)).permute(0, 3, 1, 2)

    def out_frame_shape(self, frame_shape: Sequence[int]) -> tuple[int, ...]:
        return (frame_shape[0], self.window)

    def init_state(self, batch, frame_shape, *, device=None, dtype=None) -> State:
        return self._cache(batch, device, dtype, ("x", "q", "k", "v"))

    def step_window(self, x: Tensor, state: State, valid: Tensor | None) -> tuple[Tensor, Tensor, State]:
        """The step with the window batch first. Shape: x `(B, C)` -> `(B, n, C)`."""
        q, k, v = project(self.layer, attn_input(self.layer, x))
        xs, qs, ks, vs = (
            torch.cat([state[n], new.unsqueeze(1)], dim=1) for n, new in zip("xqkv", (x, q, k, v), strict=True)
        )
        y = tail(self.layer, xs, attend(self.layer, qs, ks, vs))
        ready, t_next = PhaseCounter.advance(state["t"], valid, self.delay, 1)
        new = {"x": xs[:, 1:], "q": qs[:, 1:], "k": ks[:, 1:], "v": vs[:, 1:], "t": t_next}
        return y, ready, keep_rows(valid, new, state)

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        y, ready, state = self.step_window(x, state, valid)
        return y.transpose(1, 2), ready, state
