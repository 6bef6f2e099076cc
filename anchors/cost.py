"""Per-piece cost of an anchor: FLOPs and parameters of its stem, each block and its head.

A subnet's cost is a sum of pieces, so each anchor is measured once (one forward of one
sample) rather than once per subnet. FLOPs come from `torch.utils.flop_counter` with timm's
fused attention switched off while counting: the counter does not see
`F.scaled_dot_product_attention` on the CPU (deit_tiny: 2.15 GFLOPs fused vs 2.51 unfused).
Figures are FLOPs, not MACs (SN-Net's tables are MACs: 1.26 G for deit_tiny).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextmanager
def unfused_attention(module: nn.Module) -> Iterator[None]:
    """Temporarily switch every timm attention layer under `module` to the explicit matmuls."""
    saved = [(m, m.fused_attn) for m in module.modules() if hasattr(m, "fused_attn")]
    for m, _ in saved:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, fused in saved:
            m.fused_attn = fused


def count_flops(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> tuple[int, torch.Tensor]:
    """FLOPs of one call of `fn(*args)` and its output."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out


def count_params(modules: Iterable[nn.Module]) -> int:
    """Parameters of `modules`, each tensor counted once."""
    seen: dict[int, int] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


@dataclass(frozen=True)
class PieceCosts:
    """Cost of each piece of an anchor, per sample."""

    stem_flops: int  # patch embedding / conv stem
    block_flops: tuple[int, ...]  # one entry per block
    head_flops: int  # final norm, pooling, classifier
    stem_params: int
    block_params: tuple[int, ...]
    head_params: int
    block_shapes: tuple[tuple[int, ...], ...]  # each block's output shape, without batch

    @property
    def flops(self) -> int:
        return self.stem_flops + sum(self.block_flops) + self.head_flops

    @property
    def params(self) -> int:
        return self.stem_params + sum(self.block_params) + self.head_params


@torch.no_grad()
def measure_pieces(adapter) -> PieceCosts:
    """Run one sample through `adapter` piece by piece, counting FLOPs and recording shapes."""
    was_training = adapter.training
    adapter.eval()
    try:
        param = next(adapter.parameters())
        x = torch.zeros(1, *adapter.input_size(), device=param.device, dtype=param.dtype)
        with unfused_attention(adapter):
            stem_flops, x = count_flops(adapter.stem, x)
            block_flops, shapes = [], []
            for blk in adapter.blocks:
                flops, x = count_flops(blk, x)
                block_flops.append(flops)
                shapes.append(tuple(x.shape[1:]))
            head_flops, _ = count_flops(adapter.head, x)
    finally:
        adapter.train(was_training)
    block_params = tuple(count_params([b]) for b in adapter.blocks)
    head_params = count_params(adapter.head_modules())
    total = count_params([adapter.model])
    return PieceCosts(
        stem_flops=stem_flops,
        block_flops=tuple(block_flops),
        head_flops=head_flops,
        stem_params=total - sum(block_params) - head_params,
        block_params=block_params,
        head_params=head_params,
        block_shapes=tuple(shapes),
    )
