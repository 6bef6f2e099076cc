"""SN-Net v1's subnet space: counts, ordering, two-way paths."""

import torch

from elastic import StitchedNet
from elastic.anchors import AnchorFamily
from elastic.builders.stitch_plan import anchor_pairs, block_pairs, match_block


def test_windows_follow_snnet_v1_order():
    windows = block_pairs([0] * 12, [0] * 12, window=2, stride=1)
    assert len(windows) == 11
    assert windows[0] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for w in range(1, 11):
        assert windows[w] == [(w, w + 1), (w + 1, w), (w + 1, w + 1)]
    assert sum(map(len, windows)) == 34


def test_anchor_pairs():
    assert anchor_pairs(3) == [(0, 1), (1, 2)]
    assert anchor_pairs(3, nearest=False) == [(0, 1), (0, 2), (1, 2)]
    assert anchor_pairs(3, two_way=True) == [(0, 1), (1, 2), (1, 0), (2, 1)]


def test_unequal_depths_match_within_stage():
    front = [0, 0, 1, 1, 2, 2, 3, 3]  # resnet18
    back = [0] * 3 + [1] * 4 + [2] * 6 + [3] * 3  # resnet50
    assert [match_block(i, front, back) for i in range(8)] == [0, 2, 4, 6, 9, 12, 13, 15]


def test_deit_family_has_71_subnets_in_snnet_order():
    torch.manual_seed(0)
    names = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
    family = AnchorFamily.from_timm(names, img_size=32)
    net = StitchedNet(family)
    subnets = net.subnets()
    assert len(subnets) == 71
    assert [s.kind for s in subnets[:3]] == ["anchor"] * 3
    assert [s.id for s in subnets] == list(range(71))
    p = net.paths
    assert (p[3].front, p[3].front_block, p[3].back, p[3].back_block) == (0, 0, 1, 0)
    assert [(q.front_block, q.back_block) for q in p[3:7]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (p[24].front, p[24].front_block, p[24].back, p[24].back_block) == (0, 7, 1, 7)
    assert subnets[24].description == "deit_tiny_patch16_224[0:8] -> deit_small_patch16_224[8:12]"
    assert all((q.front, q.back) == (0, 1) for q in p[3:37])
    assert all((q.front, q.back) == (1, 2) for q in p[37:71])
    assert (p[70].front_block, p[70].back_block) == (11, 11)
    assert len(net.stitches) == 22  # one layer per window
    # stitched FLOPs fall between the anchors' when the path crosses half way
    assert subnets[0].flops < subnets[24].flops < subnets[1].flops

    two_way = StitchedNet(family, two_way=True)
    assert len(two_way) == 71 + 68
    assert [s.description for s in two_way.subnets()[:71]] == [s.description for s in subnets]
    back = two_way.paths[71]
    assert (back.front, back.back) == (1, 0)
    per_pair = StitchedNet(family, shared_stitches=False)
    assert len(per_pair) == 71 and len(per_pair.stitches) == 68
