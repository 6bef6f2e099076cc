"""Continual transformer encoder layers: single-output and retroactive attention over a sliding window.

Continual Transformers (Hedegaard, Bakhtiarnia & Iosifidis, "Continual Transformers:
Redundancy-Free Attention for Online Inference", ICLR 2023). The offline model is an
`nn.TransformerEncoderLayer` applied to every window of the last `window` tokens. Stepping
keeps the keys and values (and, for the retroactive layer, queries and inputs) of the
window's tokens, so a step projects only the new token, with one fused query/key/value
product:

- `SingleOutputEncoderLayer`: only the newest token's output, `O(n d)` attention plus one
  token through the feed-forward block — the paper's Continual Single-Output layer. Its
  keys and values are a ring (token t at slot t mod n; one query's attention does not
  depend on the keys' order), written in place under inference: one row per stream instead
  of a shifted copy of the whole window (128 KiB read and written at n = 64, d = 256). The
  newest token's query attends over the ring in one `scaled_dot_product_attention`.
- `RetroactiveEncoderLayer`: every token of the window, updated for the new key. The paper
  updates running softmax numerators/denominators (`O(n d)`); here the window's scores are
  recomputed from the cached queries and keys (`O(n^2 d)`: 4.2 MFLOPs at n = 64, d = 256),
  which is exact and cannot cancel catastrophically when a dominant key leaves the window.
  Either way every token's output changes, so the output projection and the feed-forward
  block run on all `n` tokens and dominate the cost (75 of the layer's ~80 MFLOPs there).

The retroactive layer keeps rings too (its inputs, and queries/keys/values heads first, so the
attention reads views of them), step t writing slot t mod n. Both layers write their rings in
place under inference, overwriting only the slot of the token that leaves the window; the step
counter is never written in place, so the state a step was given can be stepped again (a
retry, or a batch that failed after the write): only the results of two different steps from
one state cannot both be kept. With grad on, masked rows, or an inference-mode state stepped
outside inference mode, they write out of place (`scatter`). The per-step maths is in
`layer_ops.py`. Any activation of the torch layer
runs as is (continual-inference 1.2.4 turns "gelu" into ReLU), and pre-norm
(`norm_first=True`) layers stream too. Masks are not supported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PhaseCounter, State, StreamingModule, keep_rows, param_device_dtype
from .layer_ops import LayerParamsCache, check_layer, out_and_tail, qkv, softmax_attention


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


def ring_write(ring: Tensor, dim: int, slot: Tensor, new: Tensor) -> Tensor:
    """A copy of `ring` with row b's `new` written at index `slot[b]` of `dim`.

    Shape:
        ring: `(B, ...)`, slot: `(B,)` int64, new: ring's shape with size 1 at `dim`.
    """
    return ring.scatter(dim, ring_index(slot, new), new)


def ring_index(slot: Tensor, new: Tensor) -> Tensor:
    """The `scatter` index that puts row b of `new` at index `slot[b]`. Shape: slot `(B,)` -> new's shape."""
    return slot.view(-1, *([1] * (new.dim() - 1))).expand(new.shape)


def oldest_first(tokens: Tensor, slot: Tensor) -> Tensor:
    """Ring-ordered tokens rotated so the oldest comes first (the newest, at `slot`, last).

    Shape:
        tokens: `(B, n, C)`, slot: `(B,)` -> `(B, n, C)`.
    """
    b, n, c = tokens.shape
    order = (slot.view(b, 1) + 1 + torch.arange(n, device=slot.device)) % n
    return tokens.gather(1, order.unsqueeze(-1).expand(b, n, c))


def at_slot(tokens: Tensor, slot: Tensor) -> Tensor:
    """Row b's token at ring index `slot[b]`. Shape: tokens `(B, n, C)`, slot `(B,)` -> `(B, C)`."""
    b, _, c = tokens.shape
    return tokens.gather(1, slot.view(b, 1, 1).expand(b, 1, c)).squeeze(1)


class _WindowLayer(StreamingModule):
    """Geometry shared by the window layers: delay `window - 1`, receptive field `window`."""

    def __init__(self, layer: nn.TransformerEncoderLayer, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.layer = check_layer(layer)
        self.window = window
        self.params = LayerParamsCache(self.layer)  # the step's parameters in one tuple

    def extra_repr(self) -> str:
        return f"window={self.window}"

    @property
    def d_model(self) -> int:
        return self.layer.self_attn.embed_dim

    @property
    def heads(self) -> int:
        return self.layer.self_attn.num_heads

    @property
    def delay(self) -> int:
        return self.window - 1

    @property
    def receptive_field(self) -> int:
        return self.window

    def _ring(self, batch: int, device, dtype, *shape: int) -> Tensor:
        dev, dt = param_device_dtype(self, device, dtype)
        return torch.zeros(batch, *shape, device=dev, dtype=dt)


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
        h = self.heads
        # a ring of the keys and values of the window's tokens: (B, 2, h, n, C / h), token t at slot t mod n
        kv = self._ring(batch, device, dtype, 2, h, self.window, self.d_model // h)
        return {"kv": kv, "t": PhaseCounter.init(batch, kv.device)}

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        kv, t = state["kv"], state["t"]
        b, _, h, n, dh = kv.shape
        p = self.params.get()
        # the one new token's query, key and value in one product, viewed (B, 3, h, 1, dh); few views:
        # at batch 1 each tensor op, a view included, costs a microsecond or more of a ~100 us step
        new = qkv(p, x).view(b, 3, h, 1, dh)
        # the new key and value replace, at slot t mod n, the token that leaves the window
        if valid is None and p.no_grad and (torch.is_inference_mode_enabled() or not kv.is_inference()):
            if b == 1 and kv.is_cpu:  # one stream: its count on the host, one row written, readiness in Python
                count = int(t)
                kv.narrow(3, count % n, 1).copy_(new[:, 1:])  # ~0.7 us less than kv[..., slot] = ...
                ready = None if count >= self.delay else t >= self.delay
            else:
                kv.scatter_(3, ring_index(t % n, new[:, 1:]), new[:, 1:])
                ready = t >= self.delay
            t_next = t + 1
        else:  # grad on, masked rows, or an inference-mode state outside inference mode: out of place
            kv = ring_write(kv, 3, t % n, new[:, 1:])
            ready, t_next = PhaseCounter.advance(t, valid, self.delay, 1)
        k, v = kv.unbind(1)
        # one query over the window: order-invariant over the keys, so ring order needs no rotation
        o = F.scaled_dot_product_attention(new[:, 0], k, v).view(b, h * dh)  # (B, h, 1, dh) contiguous
        y = out_and_tail(p, x, o)
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
        h, n = self.heads, self.window
        # rings over the window's n tokens: the layer's inputs (B, n, C); queries, keys, values (B, 3, h, n, C / h)
        xs = self._ring(batch, device, dtype, n, self.d_model)
        ring = self._ring(batch, device, dtype, 3, h, n, self.d_model // h)
        return {"x": xs, "qkv": ring, "t": PhaseCounter.init(batch, xs.device)}

    def step_ring(self, x: Tensor, state: State, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor, State]:
        """The step with the window in ring order: `(tokens, slot, ready, state)`; the newest token is at `slot`.

        Shape:
            x `(B, C)` -> tokens `(B, n, C)`, slot `(B,)`.
        """
        xs, ring, t = state["x"], state["qkv"], state["t"]
        b, _, h, n, dh = ring.shape
        p = self.params.get()
        new = qkv(p, x).view(b, 3, h, 1, dh)
        slot = t % n
        x_new = x.unsqueeze(1)
        # as in the single-output layer: in place under inference (only the leaving token's slot is
        # overwritten, the counter is not, so a retry stays exact), out of place otherwise
        if valid is None and p.no_grad and (torch.is_inference_mode_enabled() or not xs.is_inference()):
            xs.scatter_(1, ring_index(slot, x_new), x_new)
            ring.scatter_(3, ring_index(slot, new), new)
        else:
            xs = ring_write(xs, 1, slot, x_new)
            ring = ring_write(ring, 3, slot, new)
        q, k, v = (r.reshape(b * h, n, dh) for r in ring.unbind(1))  # views of a contiguous ring, no copies
        o = softmax_attention(q, k, v)
        y = out_and_tail(p, xs, o.view(b, h, n, dh).transpose(1, 2).reshape(b, n, h * dh))
        ready, t_next = PhaseCounter.advance(t, valid, self.delay, 1)
        return y, slot, ready, keep_rows(valid, {"x": xs, "qkv": ring, "t": t_next}, state)

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        y, slot, ready, state = self.step_ring(x, state, valid)
        return oldest_first(y, slot).transpose(1, 2), ready, state
