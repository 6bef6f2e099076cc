"""Which stitches an SN-Net holds: anchor pairs, sliding windows, block pairs.

SN-Net v1 (Pan et al., CVPR 2023): for each pair of anchors (front -> back), a window of
`window` block ids slides over the front anchor with `stride`; every ordered pair (i, j) of
ids inside a window that was not seen before becomes a subnet "front blocks 0..i -> stitch
-> back blocks j+1..end", the stitch mapping the front's output of block i onto the back's
output of block j. Each window owns one stitching layer, shared by its pairs. With window
2, stride 1 and depth 12 that is 4 + 3 * 10 = 34 subnets per anchor pair.

When the two anchors differ in depth (ResNet-18 vs ResNet-50), a front block id is matched
to the back block at the same relative position inside the same stage, so stitches stay
between feature maps of one resolution; for equal depths the match is the identity and the
plan is exactly SN-Net v1's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StitchPath:
    """How one stitched subnet runs."""

    front: int  # anchor index of the front part
    front_block: int  # last front block run (inclusive)
    back: int  # anchor index of the back part
    back_block: int  # back block whose output the stitch imitates; the back runs the rest
    layer: str  # key of the stitching layer in `StitchedNet.stitches`


def anchor_pairs(num_anchors: int, nearest: bool = True, two_way: bool = False) -> list[tuple[int, int]]:
    """(front, back) anchor pairs, cheap -> expensive first, then SN-Netv2's way back."""
    if nearest:
        forward = [(a, a + 1) for a in range(num_anchors - 1)]
    else:
        forward = [(a, b) for a in range(num_anchors) for b in range(a + 1, num_anchors)]
    return forward + ([(b, a) for a, b in forward] if two_way else [])


def match_block(i: int, front_stages: Sequence[int], back_stages: Sequence[int]) -> int | None:
    """The back block at front block `i`'s relative position within its stage."""
    stage = front_stages[i]
    front_ids = [k for k, s in enumerate(front_stages) if s == stage]
    back_ids = [k for k, s in enumerate(back_stages) if s == stage]
    if not back_ids:
        return None
    pos = (front_ids.index(i) + 1) / len(front_ids)
    return min(back_ids, key=lambda k: (round(abs((back_ids.index(k) + 1) / len(back_ids) - pos), 9), k))


def block_pairs(
    front_stages: Sequence[int], back_stages: Sequence[int], window: int = 2, stride: int = 1
) -> list[list[tuple[int, int]]]:
    """The (front_block, back_block) pairs of each window, in SN-Net v1's order."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    depth = len(front_stages)
    width = min(window, depth)
    seen: set[tuple[int, int]] = set()
    windows = []
    for start in range(0, depth - width + 1, stride):
        ids = range(start, start + width)
        pairs = []
        for i in ids:
            for k in ids:
                if front_stages[k] != front_stages[i]:
                    continue
                j = match_block(k, front_stages, back_stages)
                if j is not None and (i, j) not in seen:
                    seen.add((i, j))
                    pairs.append((i, j))
        if pairs:
            windows.append(pairs)
    return windows
