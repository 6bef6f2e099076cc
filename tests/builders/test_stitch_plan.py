"""The stitch plans against the official code: SN-Net v1's enumeration, SN-Netv2's routes."""

import pytest

from elastic.builders.stitch_plan import (
    StitchPath,
    anchor_pairs,
    match_block,
    paired_stitching,
    v1_pairs,
    v2_routes,
    v2_stitches,
)


@pytest.mark.parametrize(
    "kernel, stride, pairs, layers", [(2, 1, 34, 11), (2, 2, 24, 6), (3, 1, 54, 10), (3, 2, 44, 6), (4, 3, 54, 4)]
)
def test_paired_stitching_counts_equal_the_official(kernel, stride, pairs, layers):
    plan = paired_stitching(12, kernel, stride)
    assert len(plan) == pairs
    assert len({(i, k) for i, k, _ in plan}) == pairs
    assert sorted({w for _, _, w in plan}) == list(range(layers))


def test_paired_stitching_order_and_shared_layers():
    plan = paired_stitching(12, 2, 1)
    assert plan[:7] == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (1, 2, 1), (2, 1, 1), (2, 2, 1)]
    assert plan[-3:] == [(10, 11, 10), (11, 10, 10), (11, 11, 10)]
    # the partial last window is kept: kernel 3, stride 2 ends with window [10, 11]
    tail = paired_stitching(12, 3, 2)[-3:]
    assert tail == [(10, 11, 5), (11, 10, 5), (11, 11, 5)]


def test_paired_stitching_rejects_bad_windows():
    with pytest.raises(ValueError):
        paired_stitching(12, 0, 1)
    with pytest.raises(ValueError):
        paired_stitching(12, 2, 0)


def test_anchor_pairs():
    assert anchor_pairs(3) == [(0, 1), (1, 2)]
    assert anchor_pairs(3, nearest=False) == [(0, 1), (0, 2), (1, 2)]


def test_equal_stages_keep_the_official_pairs():
    assert v1_pairs([0] * 12, [0] * 12) == paired_stitching(12)


def test_unequal_depths_map_back_starts_within_stage():
    front = [0, 0, 1, 1, 2, 2, 3, 3]  # resnet18
    back = [0] * 3 + [1] * 4 + [2] * 6 + [3] * 3  # resnet50
    assert [match_block(i, front, back) for i in range(8)] == [0, 2, 4, 6, 9, 12, 13, 15]
    pairs = v1_pairs(front, back)
    assert pairs[:4] == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]  # k=1: after back block 0
    assert pairs[4] == (1, 3, 1)  # k=2: after back block 2, the end of resnet50's first stage
    assert len({(i, k) for i, k, _ in pairs}) == len(pairs)


def test_v2_stitch_positions_equal_depth():
    sl, ls = v2_stitches(12, 12)
    assert [(s.i, s.k, s.layer) for s in sl] == [(i, i + 1, i) for i in range(12)]
    assert [(s.i, s.k, s.layer) for s in ls] == [(i, i + 1, i) for i in range(11)]


def test_v2_stitch_positions_unequal_depth():
    sl, ls = v2_stitches(12, 24)  # DeiT-B -> DeiT-L in SN-Netv2
    assert [(s.i, s.k) for s in sl[:3]] == [(0, 2), (1, 4), (2, 6)]
    assert [s.i for s in ls] == list(range(1, 23, 2))
    assert [(s.i, s.k, s.layer) for s in ls[:2]] == [(1, 1, 0), (3, 2, 1)]
    with pytest.raises(ValueError):
        v2_stitches(12, 18)


def test_v2_routes_counts_and_two_stitch_rules():
    routes = v2_routes(12, 12)
    kinds = [k for k, _ in routes]
    assert [kinds.count(k) for k in ("sl", "ls", "lsl", "sls")] == [12, 11, 55, 55]
    assert kinds == sorted(kinds, key=["sl", "ls", "lsl", "sls"].index)  # official order
    for kind, (a, *rest) in routes:
        if rest:
            (b,) = rest
            assert b.i >= a.k  # at least one block between the stitches
            if kind == "lsl":
                assert b.layer != 11


def test_stitch_path_views():
    p = StitchPath((0, 1), ((0, 8), (7, 12)), ("0to1_w7",))
    assert (p.front, p.front_block, p.back, p.back_start, p.back_block, p.layer) == (0, 7, 1, 7, 6, "0to1_w7")
    two = StitchPath((0, 1, 0), ((0, 3), (3, 6), (7, 12)), ("a", "b"))
    with pytest.raises(ValueError):
        _ = two.layer
