"""Stage boundaries of a block-wise forward: where a subnet can pause, and how it runs in stages.

A subnet that runs as stem → blocks → head (a `StitchedNet` path, a `LearngenePool`
descendant, a whole anchor) can pause between two blocks: the preemptive scheduler
(`serving/preemption.py`) runs an urgent batch there. Builders list the pieces of a subnet
in execution order (`StagedPieces.path_pieces`), a stitching layer folded into the block
before it (`fold`); `flops_fractions` turns their FLOPs into the boundaries
(`ElasticModel.stage_fractions`), `in_stages` them into one function per stage
(`ElasticModel.stage_pieces`, which the traced executor traces one graph each) and
`StagedPieces` those into the staged forward (`ElasticModel.forward_stages`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import torch

Piece = Callable[[torch.Tensor], torch.Tensor]
Pieces = tuple[Piece, list[Piece], Piece]  # stem, blocks, head


def flops_fractions(stem_flops: int, block_flops: Sequence[int], head_flops: int) -> tuple[float, ...]:
    """The share of the FLOPs done after each block but the last (FLOPs stand in for time)."""
    total = stem_flops + sum(block_flops) + head_flops
    done, fractions = stem_flops, []
    for f in block_flops[:-1]:
        done += f
        fractions.append(done / total)
    return tuple(fractions)


def in_stages(stem: Piece, blocks: Sequence[Piece], head: Piece) -> list[Piece]:
    """head(blocks[-1](... blocks[0](stem(x)))) as one function per stage, a stage ending at
    each block boundary: the stem runs with the first block, the head with the last
    (max(1, len(blocks)) stages)."""
    if not blocks:
        return [lambda x: head(stem(x))]
    stages: list[Piece] = [*blocks]
    first = stages[0]
    stages[0] = lambda x: first(stem(x))
    last = stages[-1]  # the first stage, stem included, when there is one block
    stages[-1] = lambda x: head(last(x))
    return stages


def run_in_stages(x: torch.Tensor, stages: Sequence[Piece]) -> Generator[None, None, torch.Tensor]:
    """stages[-1](... stages[0](x)), yielding between two stages (len(stages) - 1 times);
    returns the output."""
    x = stages[0](x)
    for stage in stages[1:]:
        yield
        x = stage(x)
    return x


def then(block: Piece, stitch: Piece) -> Piece:
    """`block` followed by `stitch`: one piece, so the pause comes after the stitch."""
    return lambda x: stitch(block(x))


def fold(stem: Piece, blocks: list[Piece], stitch: Piece) -> tuple[Piece, list[Piece]]:
    """Run `stitch` with the piece before it (the last block, or the stem before any block),
    so a pause comes after the stitch, never between a block and its stitch."""
    if blocks:
        return stem, [*blocks[:-1], then(blocks[-1], stitch)]
    return then(stem, stitch), blocks


class StagedPieces:
    """For an `ElasticModel` whose subnets run as stem → blocks → head, with a `family` of
    anchors and `paths` (subnet id -> how it runs; None: the family's member of that id
    alone): its forward, stage boundaries and staged forward. A builder lists a path's FLOPs
    (`path_flops`) and pieces (`path_pieces`) and runs a path (`run_path`); a whole anchor's
    come from the family. Put it before `ElasticModel` in the bases."""

    def path(self, subnet):
        """How a subnet runs (its entry in `paths`); None for the family's member of its id alone."""
        return self.paths[self.subnet(subnet).id]

    def run_path(self, x: torch.Tensor, path) -> torch.Tensor:
        """A path's logits on the model's input `x` (what `forward` runs for it)."""
        raise NotImplementedError

    def path_flops(self, path) -> tuple[int, list[int], int]:
        """FLOPs of a path's stem, of each of its blocks in order, and of its head."""
        raise NotImplementedError

    def path_pieces(self, path) -> Pieces:
        """A path's stem, blocks and head, in execution order, stitches folded in (`fold`)."""
        raise NotImplementedError

    def stage_fractions(self, subnet=0) -> tuple[float, ...]:
        """The share of the subnet's FLOPs done after each of its blocks but the last: it can
        pause between two (`forward_stages`). FLOPs stand in for time; a stitching layer's
        few are left out."""
        sid = self.subnet(subnet).id
        path = self.paths[sid]
        if path is None:
            c = self.family.costs[sid]
            return flops_fractions(c.stem_flops, c.block_flops, c.head_flops)
        return flops_fractions(*self.path_flops(path))

    def forward(self, x: torch.Tensor, subnet=0, *, check: bool = True) -> torch.Tensor:
        """Logits of one subnet (`check=False`: `x` already passed `check_input`).

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        sid, path = self._path_of(x, subnet, check)
        if path is None:
            return self.family[sid](x)
        return self.run_path(x, path)

    def stage_pieces(self, subnet=0) -> list[Piece]:
        """The subnet's forward as one function per stage (`in_stages`): applied in order they
        give `forward` (its input checked already), and `forward_stages` pauses between two."""
        sid = self.subnet(subnet).id
        path = self.paths[sid]
        if path is None:
            anchor = self.family[sid]
            return in_stages(anchor.stem, anchor.blocks, anchor.head)
        return in_stages(*self.path_pieces(path))

    def forward_stages(self, x: torch.Tensor, subnet=0, *, check: bool = True) -> Generator[None, None, torch.Tensor]:
        """`forward`, pausing (a `yield`) between two blocks: the same operations in the same
        order, so the same logits, with `len(stage_fractions(subnet))` pauses (`check=False`:
        `x` already passed `check_input`).

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        sid, _ = self._path_of(x, subnet, check)
        return (yield from run_in_stages(x, self.stage_pieces(sid)))

    def _path_of(self, x: torch.Tensor, subnet, check: bool):
        """(id, path) of `subnet`, once `x` passed `check_input` (unless `check` is False)."""
        sid = self.subnet(subnet).id
        if check:
            self.check_input(x)
        return sid, self.paths[sid]
