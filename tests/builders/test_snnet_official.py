"""SN-Net v1 on DeiT Ti/S/B at 224 against the official table: the same 71 networks, same ids.

The published FLOPs (`elastic.builders.published`) are fvcore multiply-adds with LayerNorm;
ours are torch's FLOP counter (no LayerNorm) with attention unfused, so FLOPs / 2 must match
each config of the same id within 1 %. Random weights: the structure is what is tested.
"""

import pytest
import torch

from elastic.anchors import AnchorFamily
from elastic.builders.published import snnet_deit_published
from elastic.builders.stitched import StitchedNet

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deit_snnet():
    torch.manual_seed(0)
    return StitchedNet(AnchorFamily.from_timm(DEIT))


def test_71_subnets_match_the_official_configs_in_order(deit_snnet):
    published = snnet_deit_published()
    subnets = deit_snnet.subnets()
    assert len(subnets) == len(published) == 71
    assert [s.id for s in subnets] == sorted(published)
    off = {s.id: s.flops / 2 / published[s.id].macs - 1 for s in subnets}
    assert max(abs(v) for v in off.values()) < 0.01, {k: round(v, 4) for k, v in off.items() if abs(v) >= 0.01}
    # the example: official config 24 is deit_tiny blocks 0..7 -> deit_small from block 7
    assert subnets[24].description == "deit_tiny_patch16_224[0:8] -> deit_small_patch16_224[7:12]"
    assert published[24].macs == pytest.approx(2.759e9, rel=1e-3)


def test_official_structure(deit_snnet):
    paths = deit_snnet.paths
    assert paths[:3] == [None] * 3
    assert all(p.anchors == (0, 1) for p in paths[3:37]) and all(p.anchors == (1, 2) for p in paths[37:])
    assert [(p.front_block, p.back_start) for p in paths[3:7]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(deit_snnet.stitches) == 22  # one layer per window and anchor pair
    assert not deit_snnet.final_norm  # the released DeiT results skip the back's final norm


def test_info_prints_the_published_top1_beside_each_deit_subnet(deit_snnet):
    """`elastic info` recognises SN-Net over DeiT Ti/S/B from the manifest fields `save` writes."""
    from elastic.commands.info import format_subnets, is_snnet_deit_tsb

    manifest = {
        "builder": "StitchedNet",
        "anchors": deit_snnet.anchor_specs(),
        "config": deit_snnet.config(),
        "subnets": [s.to_dict() for s in deit_snnet.subnets()],
    }
    assert is_snnet_deit_tsb(manifest)
    published = {i: r.top1 for i, r in snnet_deit_published().items()}
    lines = format_subnets(deit_snnet.subnets(), published).splitlines()
    assert "SN-Net top-1 %" in lines[0]
    row24 = lines[1 + 24].split()
    assert row24[0] == "24" and "75.63" in row24 and row24[-1] == "deit_small_patch16_224[7:12]"
    # another plan, or other anchors, is not the published table
    assert not is_snnet_deit_tsb({**manifest, "config": {**manifest["config"], "plan": "v2"}})
    assert not is_snnet_deit_tsb({**manifest, "subnets": manifest["subnets"][:70]})
    small = [dict(a, kwargs={**a["kwargs"], "img_size": 32}) for a in manifest["anchors"]]
    assert not is_snnet_deit_tsb({**manifest, "anchors": small})
