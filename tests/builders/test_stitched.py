"""StitchedNet: least-squares stitches, forward over every subnet, input validation."""

import pytest
import torch

from elastic import StitchedNet, Subnet, pareto
from elastic.builders.stitch_layer import flatten_channels
from elastic.builders.stitched import stitch_error
from elastic.errors import InvalidInput, UnknownSubnet


def _held_out_error(net, images):
    errors = [stitch_error(net.stitches[key], a, b) for key, ops in net.stitch_targets(images).items() for a, b in ops]
    return sum(errors) / len(errors)


def test_least_squares_beats_default_init_on_held_out_images(tiny_vit_family):
    torch.manual_seed(0)
    net = StitchedNet(tiny_vit_family).eval()
    held_out = torch.randn(16, 3, 32, 32)
    default = _held_out_error(net, held_out)
    fitted = net.init_stitches(torch.randn(32, 3, 32, 32))
    assert all(0 <= e < 1 for e in fitted.values())
    assert _held_out_error(net, held_out) < 0.9 * default


def test_least_squares_target_is_the_back_anchors_input_to_block_k(tiny_vit_family):
    """SN-Net's target for config (i, k): the back's input to block k (patch embedding at k = 0)."""
    net = StitchedNet(tiny_vit_family).eval()
    images = torch.randn(4, 3, 32, 32)
    targets = net.stitch_targets(images)
    inputs = {}  # (anchor, block) -> the tensor timm's own forward feeds that block
    hooks = [
        blk.register_forward_pre_hook(lambda m, args, key=(a, j): inputs.__setitem__(key, args[0].detach()))
        for a, anchor in enumerate(tiny_vit_family)
        for j, blk in enumerate(anchor.model.blocks)
    ]
    outputs = {}
    hooks += [
        blk.register_forward_hook(lambda m, args, out, key=(a, j): outputs.__setitem__(key, out.detach()))
        for a, anchor in enumerate(tiny_vit_family)
        for j, blk in enumerate(anchor.model.blocks)
    ]
    with torch.no_grad():
        for anchor in tiny_vit_family:
            anchor.model(images)
    for h in hooks:
        h.remove()
    checked = {"stem": 0, "block": 0}
    for path in net.paths[len(tiny_vit_family) :]:
        want_a = flatten_channels(outputs[(path.front, path.front_block)], "tokens")
        want_b = flatten_channels(inputs[(path.back, path.back_start)], "tokens")
        assert any(torch.equal(a, want_a) and torch.equal(b, want_b) for a, b in targets[path.layer]), path
        checked["stem" if path.back_start == 0 else "block"] += 1
    assert checked["stem"] > 0 and checked["block"] > 0


def _twin_family():
    """Two anchors with identical weights (different labels): the exact stitch is the identity."""
    from elastic.anchors import AnchorFamily

    torch.manual_seed(0)
    kwargs = dict(embed_dim=32, num_heads=1, depth=4, img_size=32, patch_size=8, num_classes=10)
    family = AnchorFamily.from_timm([("vit_tiny_patch16_224", kwargs, "a"), ("vit_tiny_patch16_224", kwargs, "twin")])
    family[1].model.load_state_dict(family[0].model.state_dict())
    return family


@pytest.mark.parametrize("final_norm", [True, False])
def test_identity_stitch_between_identical_anchors_reproduces_the_anchor(final_norm):
    family = _twin_family()
    net = StitchedNet(family, final_norm=final_norm).eval()
    for layer in net.stitches.values():
        layer.set_solution(torch.eye(layer.out_features), torch.zeros(layer.out_features))
    x = torch.randn(2, 3, 32, 32)
    model = family[0].model
    with torch.no_grad():
        anchor = model(x)
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        no_norm = model.forward_head(model.blocks(tokens))  # timm's forward without the final norm
        joined = [p for p in net.paths if p is not None and p.back_start == p.front_block + 1]
        assert len(joined) == family[0].depth - 1
        for path in joined:
            out = net(x, subnet=net.paths.index(path))
            torch.testing.assert_close(out, anchor if final_norm else no_norm, atol=1e-5, rtol=1e-5)
        # and the anchors themselves are timm's forward either way
        assert torch.equal(net(x, subnet=0), anchor)
    if not final_norm:
        assert (anchor - no_norm).abs().max() > 1e-3  # the option changes the stitched paths


def test_final_norm_default_follows_the_plan(tiny_vit_family):
    v1, v2 = StitchedNet(tiny_vit_family), StitchedNet(tiny_vit_family, plan="v2")
    assert (v1.final_norm, v2.final_norm) == (False, True)
    kept = StitchedNet(tiny_vit_family, final_norm=True)
    for a, b in zip(v1.subnets(), kept.subnets(), strict=True):
        if a.kind == "anchor":
            assert a == b
        else:  # the back anchor's LayerNorm: 2·C parameters (torch's counter gives norms 0 FLOPs)
            width = tiny_vit_family[v1.paths[a.id].back].model.embed_dim
            assert b.flops >= a.flops and b.params - a.params == 2 * width


@pytest.mark.slow
def test_v2_paths_run_and_two_stitch_flops_lie_between_their_anchors(tiny_vit_family):
    torch.manual_seed(1)
    net = StitchedNet(tiny_vit_family, plan="v2").eval()
    net.init_stitches(torch.randn(8, 3, 32, 32))
    kinds = {}
    for p in net.paths[3:]:
        kinds[p.anchors] = kinds.get(p.anchors, 0) + 1
    # depth 4: small->large 4, large->small 3, two-stitch 3 + 3, per neighbouring pair
    assert kinds == {(0, 1): 4, (1, 0): 3, (1, 0, 1): 3, (0, 1, 0): 3, (1, 2): 4, (2, 1): 3, (2, 1, 2): 3, (1, 2, 1): 3}
    one_stitch = {key for p in net.paths[3:] if len(p.layers) == 1 for key in p.layers}
    assert {key for p in net.paths[3:] for key in p.layers} == one_stitch  # two-stitch paths reuse them
    subnets = net.subnets()
    x = torch.randn(2, 3, 32, 32)
    for s in subnets[3:]:
        p = net.paths[s.id]
        lo, hi = sorted(subnets[a].flops for a in set(p.anchors))
        if len(p.layers) == 2:
            assert lo < s.flops < hi, s
        with torch.no_grad():
            assert torch.isfinite(net(x, subnet=s)).all()


def test_lora_stitch_uses_v2_scale_and_freezes_the_base(tiny_vit_family):
    net = StitchedNet(tiny_vit_family, lora_rank=4)
    layer = next(iter(net.stitches.values()))
    assert layer.lora_scale == pytest.approx(0.25) and not layer.weight.requires_grad and layer.bias.requires_grad
    torch.nn.init.normal_(layer.lora_b)
    x = torch.randn(5, layer.in_features)
    want = x @ (layer.weight + 0.25 * layer.lora_b @ layer.lora_a).T + layer.bias
    torch.testing.assert_close(layer(x[None])[0], want, atol=1e-5, rtol=1e-5)
    layer.merge_lora()
    torch.testing.assert_close(layer(x[None])[0], want, atol=1e-5, rtol=1e-5)
    trainable = StitchedNet(tiny_vit_family, lora_rank=4, lora_freeze_base=False)
    assert all(layer.weight.requires_grad for layer in trainable.stitches.values())


def test_every_subnet_gives_finite_logits(tiny_stitched):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for s in tiny_stitched.subnets():
            out = tiny_stitched(x, subnet=s)
            assert out.shape == (3, 10) and torch.isfinite(out).all(), s


@pytest.mark.slow
def test_subnet_flops_equal_a_count_of_their_own_forward(tiny_stitched):
    from elastic.anchors.cost import count_flops, unfused_attention

    subnets = tiny_stitched.subnets()
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad(), unfused_attention(tiny_stitched):
        for s in subnets:
            assert count_flops(tiny_stitched, x, s.id)[0] == s.flops, s
    # a stitched path's parameters are the pieces it touches, never the whole model
    total = sum(p.numel() for p in tiny_stitched.parameters())
    assert max(s.params for s in subnets) < total


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(2, 3, 16, 16), "shape"),
        (torch.randn(3, 32, 32), "shape"),
        (torch.zeros(0, 3, 32, 32), "shape"),
        (torch.ones(2, 3, 32, 32, dtype=torch.int64), "floating"),
        (torch.full((2, 3, 32, 32), float("nan")), "NaN"),
        (torch.randn(2, 3, 32, 32).index_put_((torch.tensor(1), torch.tensor(2)), torch.tensor(float("-inf"))), "NaN"),
        ([[1.0]], "Tensor"),
    ],
)
def test_bad_inputs_raise_invalid_input(tiny_stitched, bad, match):
    with pytest.raises(InvalidInput, match=match) as caught:
        tiny_stitched(bad, subnet=0)
    assert isinstance(caught.value, ValueError)  # callers may catch it as a ValueError


def test_finite_inputs_whose_sum_overflows_are_accepted(tiny_stitched):
    # the finiteness check sums first: an overflow to inf must not reject finite inputs
    x = torch.full((2, 3, 32, 32), 3e38)
    assert not torch.isfinite(x.sum())
    tiny_stitched.check_input(x)
    half = torch.full((2, 3, 32, 32), 100.0, dtype=torch.float16)  # its own sum overflows half's range
    assert not torch.isfinite(half.sum())
    tiny_stitched.check_input(half)
    half[1, 2, 3, 4] = float("inf")
    with pytest.raises(InvalidInput, match="NaN"):
        tiny_stitched.check_input(half)


@pytest.mark.parametrize("ref", [-1, 23, 1.5, True, "3"])
def test_unknown_subnets_raise(tiny_stitched, ref):
    with pytest.raises(UnknownSubnet):
        tiny_stitched(torch.randn(1, 3, 32, 32), subnet=ref)


def test_subnet_from_another_model_is_rejected(tiny_stitched):
    alien = Subnet(5, "stitch", "something else", 1, 1)
    with pytest.raises(UnknownSubnet, match="not"):
        tiny_stitched.subnet(alien)


def test_pareto_keeps_the_non_dominated():
    subnets = [
        Subnet(0, "anchor", "a", 10, 1, 0.5),
        Subnet(1, "anchor", "b", 30, 1, 0.9),
        Subnet(2, "stitch", "c", 20, 1, 0.7),
        Subnet(3, "stitch", "d", 25, 1, 0.6),
        Subnet(4, "stitch", "e", 20, 1, 0.65),
        Subnet(5, "stitch", "f", 5, 1, None),
    ]
    assert pareto(subnets) == [0, 2, 1]
    assert pareto(subnets, key=lambda s: -s.flops) == [1]


def test_sample_subnet_policies(tiny_stitched):
    import random

    rng = random.Random(0)
    uniform = {tiny_stitched.sample_subnet(rng).id for _ in range(500)}
    assert uniform == set(range(len(tiny_stitched)))
    groups = tiny_stitched.flops_groups()
    assert sorted(i for g in groups for i in g) == list(range(len(tiny_stitched)))
    assert len(groups) > 2
    draws = [tiny_stitched.sample_subnet(rng, "flops").id for _ in range(3000)]
    per_group = [sum(d in g for d in draws) / len(draws) for g in groups]
    assert all(abs(f - 1 / len(groups)) < 0.05 for f in per_group)  # groups drawn uniformly
    with pytest.raises(ValueError):
        tiny_stitched.sample_subnet(rng, "nope")


def test_flops_groups_follow_snnetv2(tiny_stitched):
    flops = {s.id: s.flops for s in tiny_stitched.subnets()}
    gap = (max(flops.values()) - min(flops.values())) / 4
    groups = tiny_stitched.flops_groups(gap)
    refs = [min(flops[i] for i in g) for g in groups]
    assert refs == sorted(refs)
    for g in groups:  # within a group, everything lies within `gap` of its reference
        assert max(flops[i] for i in g) - min(flops[i] for i in g) <= gap or min(flops[i] for i in g) <= gap


def test_stage_fractions_are_the_flops_done_after_each_block_but_the_last(tiny_stitched):
    net = tiny_stitched
    costs = net.family.costs
    for s in net.subnets():
        fractions = net.stage_fractions(s.id)
        path = net.path(s.id)
        if path is None:  # a whole anchor: exactly its own pieces' FLOPs
            c = costs[s.id]
            stem, blocks, head = c.stem_flops, list(c.block_flops), c.head_flops
            assert stem + sum(blocks) + head == s.flops
        else:  # the front's stem, each segment's blocks in turn, the back's head (stitches left out)
            stem, head = costs[path.front].stem_flops, costs[path.back].head_flops
            blocks = [
                f for a, (lo, hi) in zip(path.anchors, path.segments, strict=True) for f in costs[a].block_flops[lo:hi]
            ]
        assert len(fractions) == len(blocks) - 1 > 0
        assert fractions[0] == pytest.approx((stem + blocks[0]) / (stem + sum(blocks) + head))
        assert fractions[-1] == pytest.approx(1 - (blocks[-1] + head) / (stem + sum(blocks) + head))
        assert all(0 < a < b < 1 for a, b in zip(fractions, fractions[1:], strict=False))


def test_forward_stages_pauses_between_blocks_and_gives_the_forward_bit_for_bit(tiny_stitched, drain):
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        for s in tiny_stitched.subnets():
            y, pauses = drain(tiny_stitched.forward_stages(x, s.id))
            assert pauses == len(tiny_stitched.stage_fractions(s.id))
            assert torch.equal(y, tiny_stitched(x, s.id))
            assert len(tiny_stitched.stage_pieces(s.id)) == pauses + 1  # what the staged forward ran
