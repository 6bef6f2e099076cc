"""Anchors: adapters compose back to timm's forward; families are checked; cost is counted."""

import pytest
import timm
import torch

from elastic import StitchedNet
from elastic.anchors import AnchorFamily, adapt, measure_pieces, supported_families
from elastic.errors import UnsupportedArchitecture

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]


@pytest.fixture(scope="module")
def deit_family():
    torch.manual_seed(0)
    return AnchorFamily.from_timm(list(reversed(DEIT)), img_size=32, num_classes=7)


def test_deit_family_is_ordered_by_cost(deit_family):
    assert deit_family.names == DEIT
    flops = [c.flops for c in deit_family.costs]
    assert flops == sorted(flops)


def test_deit_anchor_subnets_equal_timm_forward(deit_family):
    net = StitchedNet(deit_family).eval()
    x = torch.randn(2, 3, 32, 32)
    for k, adapter in enumerate(deit_family.anchors):
        with torch.no_grad():
            ours, theirs = net(x, subnet=k), adapter.model(x)
        assert ours.shape == (2, 7)
        assert (ours - theirs).abs().max().item() <= 1e-5


def test_resnet_anchor_subnets_equal_timm_forward():
    torch.manual_seed(0)
    family = AnchorFamily.from_timm(["resnet50", "resnet18"], num_classes=5)
    assert family.names == ["resnet18", "resnet50"]
    net = StitchedNet(family).eval()
    x = torch.randn(2, 3, 224, 224)
    for k, adapter in enumerate(family.anchors):
        with torch.no_grad():
            diff = (net(x, subnet=k) - adapter.model(x)).abs().max().item()
        assert diff <= 1e-5
    # every stitch joins blocks of one stage, i.e. feature maps of one resolution
    for path in net.paths[2:]:
        assert family[0].stage(path.front_block) == family[1].stage(path.back_block)
        f_shape = family.costs[path.front].block_shapes[path.front_block]
        b_shape = family.costs[path.back].block_shapes[path.back_block]
        assert f_shape[1:] == b_shape[1:]
    with torch.no_grad():
        out = net(x, subnet=len(net) - 1)
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_family_rejects_mixed_architectures():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=3)
    cnn = timm.create_model("resnet18", num_classes=3)
    with pytest.raises(UnsupportedArchitecture, match="mixes architectures"):
        AnchorFamily([vit, cnn])


def test_family_rejects_different_input_sizes():
    a = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=3)
    b = timm.create_model("vit_small_patch16_224", img_size=64, depth=2, num_classes=3)
    with pytest.raises(UnsupportedArchitecture, match="different inputs"):
        AnchorFamily([a, b])


def test_unknown_family_names_supported_ones():
    model = timm.create_model("mobilenetv3_small_050", num_classes=3)
    with pytest.raises(UnsupportedArchitecture) as err:
        adapt(model)
    for family in supported_families():
        assert family in str(err.value)


def test_flops_count_attention_unfused():
    model = timm.create_model("deit_tiny_patch16_224")
    costs = measure_pieces(adapt(model))
    # SN-Net's table: deit_tiny 1.26 GMACs = ~2.5 GFLOPs; fused attention would hide ~0.36 G
    assert 2.45e9 < costs.flops < 2.6e9
    assert costs.params == sum(p.numel() for p in model.parameters())
    assert all(m.fused_attn == timm.layers.use_fused_attn() for m in model.modules() if hasattr(m, "fused_attn"))


def test_capture_returns_every_block_boundary(tiny_vit_family):
    acts = tiny_vit_family.capture(torch.randn(3, 3, 32, 32))
    assert [len(a) for a in acts] == [4, 4, 4]
    assert acts[2][3].shape == (3, 17, 128)


def test_capture_restores_training_mode(tiny_vit_family):
    for mode in (True, False):
        tiny_vit_family.train(mode)
        tiny_vit_family.capture(torch.randn(1, 3, 32, 32))
        assert tiny_vit_family.training is mode
        assert all(m.training is mode for m in tiny_vit_family.modules())
