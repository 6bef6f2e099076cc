"""Which stitched paths an SN-Net holds, as in the official code of SN-Net and SN-Netv2.

SN-Net v1 (Pan et al., CVPR 2023; ziplab/SN-Net `stitching_deit/utils.py: paired_stitching`):
a window of `kernel` block ids slides over the anchors' depth with `stride`, the partial last
window included; every ordered pair (i, k) of ids inside a window that no earlier window gave
is a configuration "front blocks [0 : i+1] -> stitch -> back blocks [k :]", the stitch mapping
the front's output of block i onto the back anchor's *input* to block k (its stem output when
k = 0). A window that adds pairs owns one stitching layer, shared by them. Pair counts for depth
12: kernel/stride (2,1) 34, (2,2) 24, (3,1) 54, (3,2) 44, (4,3) 54.

Anchors of different depths (CNNs: ResNet-18 vs ResNet-50) use the same pairs over the front's
depth, each back start k mapped to the back block after the one at block k-1's relative position
inside its stage (`match_block`), so the stitch still joins feature maps of one resolution. The
official CNN code never stitches into a stem, and neither does this mapping (see `StitchedNet`).

SN-Netv2 (Pan et al., 2023; ziplab/SN-Netv2 `classification/snnet.py:
get_stitch_configs_bidirection`): per anchor pair, one layer per position and direction —
small -> large after each small block i (back from block (i+1)·r, r = depth ratio), large ->
small, and the two-stitch paths large -> small -> large and small -> large -> small (`v2_paths`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StitchPath:
    """How one stitched subnet runs: blocks of each anchor in turn, a stitch between them.

    `segments[s]` are the blocks [start, stop) run on `anchors[s]`; the first anchor's stem
    runs first and the last anchor's head last; `layers[s]` joins segment s to segment s+1.
    """

    anchors: tuple[int, ...]  # anchor indices visited, e.g. (0, 1) or (0, 1, 0)
    segments: tuple[tuple[int, int], ...]  # blocks [start, stop) run on each of them
    layers: tuple[str, ...]  # keys into `StitchedNet.stitches`, one per stitch

    @property
    def front(self) -> int:
        return self.anchors[0]

    @property
    def back(self) -> int:
        return self.anchors[-1]

    @property
    def front_block(self) -> int:
        """Last block run on the front anchor (inclusive)."""
        return self.segments[0][1] - 1

    @property
    def back_start(self) -> int:
        """First block run on the back anchor: the stitch imitates the back's input to it."""
        return self.segments[-1][0]

    @property
    def back_block(self) -> int:
        """The back block whose output the last stitch imitates (-1: the back's stem output)."""
        return self.back_start - 1

    @property
    def layer(self) -> str:
        """The stitching layer of a one-stitch path."""
        if len(self.layers) != 1:
            raise ValueError(f"a path with {len(self.layers)} stitches has no single layer")
        return self.layers[0]


def paired_stitching(depth: int, kernel: int = 2, stride: int = 1) -> list[tuple[int, int, int]]:
    """SN-Net v1's (front block i, back start k, layer index) triples, in official order.

    Windows `range(start, start + kernel)` clipped to the depth, for start = 0, stride, ...
    below `depth`; each window's new ordered pairs share one layer index.
    """
    if kernel < 1 or stride < 1 or depth < 1:
        raise ValueError(f"depth, kernel and stride must be >= 1, got {depth}, {kernel}, {stride}")
    seen: set[tuple[int, int]] = set()
    out = []
    layer = 0
    for start in range(0, depth, stride):
        ids = range(start, min(start + kernel, depth))
        new = [(i, k) for i in ids for k in ids if (i, k) not in seen]
        if new:
            seen.update(new)
            out.extend((i, k, layer) for i, k in new)
            layer += 1
    return out


def anchor_pairs(num_anchors: int, nearest: bool = True) -> list[tuple[int, int]]:
    """(front, back) anchor pairs, cheaper in front: neighbours in cost, or every pair."""
    if nearest:
        return [(a, a + 1) for a in range(num_anchors - 1)]
    return [(a, b) for a in range(num_anchors) for b in range(a + 1, num_anchors)]


def match_block(i: int, front_stages: Sequence[int], back_stages: Sequence[int]) -> int | None:
    """The back block at front block `i`'s relative position within its stage."""
    stage = front_stages[i]
    front_ids = [k for k, s in enumerate(front_stages) if s == stage]
    back_ids = [k for k, s in enumerate(back_stages) if s == stage]
    if not back_ids:
        return None
    pos = (front_ids.index(i) + 1) / len(front_ids)
    return min(back_ids, key=lambda k: (round(abs((back_ids.index(k) + 1) / len(back_ids) - pos), 9), k))


def v1_pairs(
    front_stages: Sequence[int], back_stages: Sequence[int], kernel: int = 2, stride: int = 1
) -> list[tuple[int, int, int]]:
    """`paired_stitching` over the front's depth, back starts mapped into the back anchor.

    Equal stage layouts (every ViT pair of equal depth) map k to itself, so this is exactly
    the official list. Otherwise k -> `match_block(k - 1) + 1` (k = 0 stays 0), and pairs
    whose mapped start was already taken are dropped.

    Returns:
        (front block i, back start k, layer index) per configuration, in official order.
    """
    same = list(front_stages) == list(back_stages)
    seen: set[tuple[int, int]] = set()
    out = []
    for i, k, layer in paired_stitching(len(front_stages), kernel, stride):
        if not same and k > 0:
            j = match_block(k - 1, front_stages, back_stages)
            if j is None:
                continue
            k = j + 1
        if (i, k) not in seen:
            seen.add((i, k))
            out.append((i, k, layer))
    return out


@dataclass(frozen=True)
class V2Stitch:
    """One SN-Netv2 stitch position: front block i -> back start k through layer `layer`."""

    i: int
    k: int
    layer: int


def v2_stitches(small_depth: int, large_depth: int) -> tuple[list[V2Stitch], list[V2Stitch]]:
    """SN-Netv2's small -> large and large -> small stitch positions.

    small -> large: after each small block i, into large block (i+1)·r (r = large/small depth).
    large -> small: after large block i into the small block after its nearest-interpolated
    counterpart; every large block but the last when depths are equal, odd ones otherwise.
    """
    if large_depth < small_depth or large_depth % small_depth:
        raise ValueError(
            f"SN-Netv2 needs the larger depth to be a multiple of the smaller: {small_depth}, {large_depth}"
        )
    ratio = large_depth // small_depth
    small_to_large = [V2Stitch(i, (i + 1) * ratio, i) for i in range(small_depth)]
    mapped = [i * small_depth // large_depth for i in range(large_depth)]  # nearest interpolation
    large_to_small = [
        V2Stitch(i, mapped[i] + 1, i // ratio)
        for i in range(large_depth - 1)
        if large_depth == small_depth or i % 2 == 1
    ]
    return small_to_large, large_to_small


def v2_routes(small_depth: int, large_depth: int) -> list[tuple[str, tuple[V2Stitch, ...]]]:
    """SN-Netv2's stitched routes in official order: "sl", "ls", "lsl", "sls" (small/large).

    Two-stitch routes need at least one block between the stitches; large -> small -> large
    never uses the last small -> large position (it leaves no small block after it).
    """
    sl, ls = v2_stitches(small_depth, large_depth)
    routes: list[tuple[str, tuple[V2Stitch, ...]]] = [("sl", (s,)) for s in sl] + [("ls", (s,)) for s in ls]
    routes += [("lsl", (a, b)) for a in ls for b in sl if b.layer != small_depth - 1 and b.i >= a.k]
    routes += [("sls", (a, b)) for a in sl for b in ls if b.i >= a.k]
    return routes
