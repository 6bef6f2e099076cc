"""Stage boundaries of a block-wise forward: where a subnet can pause, and how it runs in stages.

A subnet that runs as stem → blocks → head (a `StitchedNet` path, a `LearngenePool`
descendant, a whole anchor) can pause between two blocks: the preemptive scheduler
(`serving/preemption.py`) runs an urgent batch there. Builders list the pieces of a subnet
in execution order, a stitching layer folded into the block before it; these two helpers
turn that list into the boundaries (`ElasticModel.stage_fractions`) and into the staged
forward (`ElasticModel.forward_stages`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import torch

Piece = Callable[[torch.Tensor], torch.Tensor]


def flops_fractions(stem_flops: int, block_flops: Sequence[int], head_flops: int) -> tuple[float, ...]:
    """The share of the FLOPs done after each block but the last (FLOPs stand in for time)."""
    total = stem_flops + sum(block_flops) + head_flops
    done, fractions = stem_flops, []
    for f in block_flops[:-1]:
        done += f
        fractions.append(done / total)
    return tuple(fractions)


def run_in_stages(
    x: torch.Tensor, stem: Piece, blocks: Sequence[Piece], head: Piece
) -> Generator[None, None, torch.Tensor]:
    """head(blocks[-1](... blocks[0](stem(x)))), yielding between two blocks (len(blocks) - 1
    times); returns the output."""
    x = stem(x)
    for k, block in enumerate(blocks):
        if k:
            yield
        x = block(x)
    return head(x)


def then(block: Piece, stitch: Piece) -> Piece:
    """`block` followed by `stitch`: one piece, so the pause comes after the stitch."""
    return lambda x: stitch(block(x))
