"""SortedNet: every subnet equals a smaller timm ViT holding the sliced weights; reordering
is a symmetry; switching is zero-copy; save/load, info, sandwich sampling, serving."""

import random

import pytest
import timm
import torch
from timm.models.vision_transformer import Attention

import elastic
from elastic import SortedNet
from elastic.anchors.cost import count_flops, unfused_attention
from elastic.builders.sorted_importance import magnitude_importance
from elastic.errors import InvalidInput, UnknownSubnet, UnsupportedArchitecture

TIMM = "vit_tiny_patch16_224"
KWARGS = dict(embed_dim=64, depth=3, num_heads=4, img_size=28, patch_size=7, in_chans=1, num_classes=10)
HEAD_DIM = 16


def _net(seed=0, **grid):
    torch.manual_seed(seed)
    return SortedNet.from_timm(TIMM, KWARGS, "vit-64", **grid).eval()


@pytest.fixture(scope="module")
def tied():
    """Heads tied to the width: 4 widths x 2 depths x 2 MLP ratios = 16 subnets."""
    return _net(depths=(1, 3), widths=(16, 32, 48, 64), mlp_ratios=(2, 4))


@pytest.fixture(scope="module")
def untied():
    """Heads independent of the width, including more attention width than embedding width."""
    return _net(seed=1, depths=(2, 3), widths=(32, 64), heads=(1, 4), mlp_ratios=(1.5, 4))


def images(n=4, seed=0):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


class _HeadDimAttention(Attention):
    """timm's Attention with the anchor's head width, whatever the embedding width."""

    def __init__(self, dim, num_heads=8, **kwargs):
        super().__init__(dim, num_heads, attn_head_dim=HEAD_DIM, **kwargs)


def reference_vit(net, subnet):
    """A standalone timm ViT of the subnet's sizes holding the anchor's weights cut to prefixes.

    Cut here from the anchor's state dict by shape alone (the first n entries of every
    dimension; the fused qkv matrix per q/k/v part), independently of `subnet_tensors`.
    """
    s = net.shape(subnet)
    kwargs = dict(KWARGS, embed_dim=s.width, depth=s.depth, num_heads=s.heads, mlp_ratio=s.mlp / s.width)
    ref = timm.create_model(TIMM, attn_layer=_HeadDimAttention, **kwargs).eval()
    full = net.vit.state_dict()
    state = {}
    for key, target in ref.state_dict().items():
        src = full[key]
        if ".attn.qkv." in key:
            src = src.view(3, -1, *src.shape[1:])  # (3, A[, C]): q, k, v
            cut = src[(slice(None),) + tuple(slice(0, n) for n in (target.shape[0] // 3, *target.shape[1:]))]
            state[key] = cut.reshape(target.shape).clone()
        else:
            state[key] = src[tuple(slice(0, n) for n in target.shape)].clone()
    ref.load_state_dict(state, strict=True)
    return ref


def test_grid_is_nested_sorted_by_flops_and_full_network_last(tied, untied):
    for net, n in ((tied, 16), (untied, 16)):
        subnets = net.subnets()
        assert len(subnets) == n and [s.id for s in subnets] == list(range(n))
        assert [s.flops for s in subnets] == sorted(s.flops for s in subnets)
        assert net.shape(subnets[-1]) == net.full_shape
        assert subnets[-1].params == sum(p.numel() for p in net.parameters())
        assert all(s.kind == "sorted" and s.flops > 0 for s in subnets)


@pytest.mark.parametrize("fused", [True, False])
def test_full_subnet_equals_the_anchors_timm_forward(tied, fused):
    x = images(5)
    with torch.no_grad():
        if fused:
            expected, got = tied.vit(x), tied(x, tied.largest())
        else:
            with unfused_attention(tied):
                expected, got = tied.vit(x), tied(x, tied.largest())
    assert torch.equal(got, tied(x)) or (got - tied(x)).abs().max() <= 1e-6
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("grid", ["tied", "untied"])
def test_every_subnet_equals_a_smaller_timm_vit_with_the_sliced_weights(grid, request):
    net = request.getfixturevalue(grid)
    x = images(3, seed=2)
    for s in net.subnets():
        ref = reference_vit(net, s)
        with torch.no_grad():
            diff = (net(x, s) - ref(x)).abs().max()
        assert diff <= 1e-5, (s, float(diff))
        assert s.params == sum(p.numel() for p in ref.parameters()), s
        with unfused_attention(ref), torch.no_grad():
            assert s.flops == count_flops(ref, x[:1])[0], s


@pytest.mark.slow
def test_forward_all_shares_blocks_and_matches_each_forward(tied):
    x = images(3, seed=7)
    every = tied.forward_all(x)
    assert sorted(every) == [s.id for s in tied.subnets()]
    with torch.no_grad():
        for sid, logits in every.items():
            assert (logits - tied(x, sid)).abs().max() <= 1e-6


@pytest.mark.parametrize("method", ["taylor", "magnitude"])
def test_reordering_keeps_the_full_output_and_sorts_by_importance(method):
    net = _net(seed=3, depths=(2, 3), widths=(32, 64), mlp_ratios=(2, 4))
    x, y = images(64, seed=4), torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(5))
    pointers = {n: p.untyped_storage().data_ptr() for n, p in net.named_parameters()}
    with torch.no_grad():
        before = {s.id: net(x, s) for s in net.subnets()}
    stats = net.reorder_by_importance(x, y, method)
    with torch.no_grad():
        after = {s.id: net(x, s) for s in net.subnets()}
    full = net.largest().id
    assert (after[full] - before[full]).abs().max() <= 1e-5
    assert stats["max_logit_change"] <= 1e-5
    assert max(float((after[i] - before[i]).abs().max()) for i in before if i != full) > 1e-3  # prefixes moved
    assert pointers == {n: p.untyped_storage().data_ptr() for n, p in net.named_parameters()}
    if method == "magnitude":  # scores of the reordered weights now come in descending order
        imp = magnitude_importance(net.vit)
        for scores in (imp.channels, *imp.heads, *imp.mlp):
            assert torch.all(scores[:-1] >= scores[1:] - 1e-4 * scores.abs().max())


@pytest.mark.slow
def test_switching_reads_views_and_allocates_no_parameter_memory(untied):
    net = untied
    storages = {n: p.untyped_storage().data_ptr() for n, p in net.named_parameters()}
    count = sum(p.numel() for p in net.parameters())
    for s in net.subnets():
        for name, t in net.subnet_tensors(s).items():
            param = net.vit.get_parameter(name)
            assert t.untyped_storage().data_ptr() == param.untyped_storage().data_ptr(), name
    x = images(2)
    for s in net.subnets():
        net.zero_grad(set_to_none=True)
        net(x, s).sum().backward()
    assert storages == {n: p.untyped_storage().data_ptr() for n, p in net.named_parameters()}
    assert count == sum(p.numel() for p in net.parameters())
    # the smallest subnet's gradient touches only its prefix
    net.zero_grad(set_to_none=True)
    small = net.smallest()
    shape = net.shape(small)
    net(x, small).sum().backward()
    fc1 = net.vit.blocks[0].mlp.fc1.weight.grad
    assert fc1[: shape.mlp, : shape.width].abs().sum() > 0
    assert fc1[shape.mlp :].abs().sum() == 0 and fc1[:, shape.width :].abs().sum() == 0
    assert net.vit.blocks[shape.depth - 1].attn.qkv.weight.grad is not None
    assert shape.depth == 3 or net.vit.blocks[shape.depth].attn.qkv.weight.grad is None
    net.zero_grad(set_to_none=True)


def test_save_load_round_trip_and_info(tied, tmp_path, capsys):
    tied.set_accuracies({s.id: 0.5 + 0.01 * s.id for s in tied.subnets()})
    elastic.save(tied, tmp_path / "model")
    loaded = elastic.load(tmp_path / "model", builder="SortedNet")
    assert isinstance(loaded, SortedNet)
    assert loaded.subnets() == tied.subnets()
    x = images(2)
    with torch.no_grad():
        for s in tied.subnets():
            assert torch.equal(loaded(x, s.id), tied(x, s.id))
    from elastic.cli import main

    assert main(["info", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "SortedNet" in out and "vit-64[d3 w64 h4 mlp256]" in out


def test_sandwich_sampling_draws_the_middle(tied):
    rng = random.Random(0)
    subnets = tied.subnets()
    drawn = {tied.sample_subnet(rng, "sandwich").id for _ in range(400)}
    assert drawn == set(range(1, len(subnets) - 1))
    with pytest.raises(ValueError, match="sandwich"):
        tied.sample_subnet(rng, "nope")


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(2, 3, 28, 28), "shape"),
        (torch.zeros(0, 1, 28, 28), "shape"),
        (torch.ones(2, 1, 28, 28, dtype=torch.int64), "floating"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    ],
)
def test_bad_inputs_raise_invalid_input(tied, bad, match):
    with pytest.raises(InvalidInput, match=match):
        tied(bad, 0)


@pytest.mark.parametrize("ref", [-1, 16, 1.5, True, "3"])
def test_unknown_subnets_raise(tied, ref):
    with pytest.raises(UnknownSubnet):
        tied(images(1), ref)


def test_grids_outside_the_anchor_and_unsliceable_models_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        _net(widths=(128,))
    with pytest.raises(ValueError, match="head width"):
        _net(widths=(24,))
    with pytest.raises(UnsupportedArchitecture):
        SortedNet(timm.create_model(TIMM, global_pool="map", **KWARGS))
    with pytest.raises(UnsupportedArchitecture):
        SortedNet(timm.create_model("resnet18", num_classes=10))


@pytest.mark.slow
def test_runtime_serves_a_sorted_net(tied):
    from elastic.serving import Runtime, measure_latency

    top = max(s.flops for s in tied.subnets())
    tied.set_accuracies({s.id: round(0.5 + 0.4 * s.flops / top, 4) for s in tied.subnets()})
    ids = [0, 5, 10, 15]  # a few subnets, the largest included: the rest are not served
    profile = measure_latency(tied, torch.zeros(1, 28, 28), (1, 2, 4), "cpu", repeats=2, warmup=1, subnets=ids)
    with Runtime(tied, max_batch_size=4, profile=profile) as rt:
        x = images(1, seed=9)[0]
        result = rt.infer(x, 60_000.0)
        assert result.subnet in rt.candidates and result.subnet == tied.largest().id
        with torch.inference_mode():
            expected = tied(x.unsqueeze(0), result.subnet)[0]
        torch.testing.assert_close(result.output, expected, atol=1e-5, rtol=1e-5)
        results = [rt.submit(images(1, seed=k)[0], 60_000.0) for k in range(6)]
        assert all(r.result(timeout=60).output.shape == (10,) for r in results)
