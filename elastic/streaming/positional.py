"""Recycling positional encoding: each frame gets position `t mod M` once, when it arrives.

Continual Transformers (Hedegaard, Bakhtiarnia & Iosifidis, "Continual Transformers:
Redundancy-Free Attention for Online Inference", ICLR 2023, Sec. 3.4): absolute positions
would change every token of the window at every step; recycling a table of `M` embeddings
(M >= window, usually 2 * window - 1) gives each token a fixed encoding, so earlier steps'
keys and values stay valid. The position counter is per row of the state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import PhaseCounter, State, StreamingModule, keep_rows


def sinusoidal_table(num_embeds: int, embed_dim: int) -> Tensor:
    """The fixed sin/cos table of Vaswani et al. for positions 0..num_embeds-1.

    Shape:
        `(num_embeds, embed_dim)`.
    """
    pos = torch.arange(num_embeds, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, embed_dim, 2, dtype=torch.float32) * (-math.log(10000.0) / embed_dim))
    table = torch.zeros(num_embeds, embed_dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : embed_dim // 2]
    return table


class RecyclingPositionalEncoding(StreamingModule):
    """Add embedding `t mod num_embeds` to the frame at stream step `t`.

    Args:
        embed_dim: channels of the frames.
        num_embeds: the recycled table's length `M`.
        learned: an `nn.Embedding` (True) or a fixed sinusoidal table (False).
    """

    def __init__(self, embed_dim: int, num_embeds: int, learned: bool = True) -> None:
        super().__init__()
        self.num_embeds = num_embeds
        if learned:
            self.pe = nn.Embedding(num_embeds, embed_dim)
        else:
            self.register_buffer("table", sinusoidal_table(num_embeds, embed_dim))

    @property
    def delay(self) -> int:
        return 0

    @property
    def receptive_field(self) -> int:
        return 1

    def _table(self) -> Tensor:
        return self.pe.weight if hasattr(self, "pe") else self.table

    def forward(self, x: Tensor) -> Tensor:
        """Shape: `(B, C, T)` -> `(B, C, T)`; frame t gets embedding `t mod M`."""
        idx = torch.arange(x.shape[2], device=x.device) % self.num_embeds
        return x + self._table()[idx].t().unsqueeze(0)

    def init_state(self, batch, frame_shape, *, device=None, dtype=None) -> State:
        dev = torch.device(device) if device is not None else self._table().device
        return {"t": PhaseCounter.init(batch, dev)}

    def step_masked(self, x: Tensor, state: State, valid: Tensor | None):
        t = state["t"]
        y = x + self._table()[t % self.num_embeds]
        t_next = (t + 1 if valid is None else t + valid.long()) % self.num_embeds
        return y, valid, keep_rows(valid, {"t": t_next}, state)
