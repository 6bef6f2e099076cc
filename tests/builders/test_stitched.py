"""StitchedNet: least-squares stitches, forward over every subnet, input validation."""

import pytest
import torch

from elastic import StitchedNet, Subnet, pareto
from elastic.builders.stitch_layer import flatten_channels
from elastic.builders.stitched import stitch_error
from elastic.errors import InvalidInput, UnknownSubnet


def _held_out_error(net, images):
    acts = net.family.capture(images)
    errors = []
    for path in net.paths:
        if path is None:
            continue
        a = flatten_channels(acts[path.front][path.front_block], "tokens")
        b = flatten_channels(acts[path.back][path.back_block], "tokens")
        errors.append(stitch_error(net.stitches[path.layer], a, b))
    return sum(errors) / len(errors)


def test_least_squares_beats_default_init_on_held_out_images(tiny_vit_family):
    torch.manual_seed(0)
    net = StitchedNet(tiny_vit_family).eval()
    held_out = torch.randn(16, 3, 32, 32)
    default = _held_out_error(net, held_out)
    fitted = net.init_stitches(torch.randn(32, 3, 32, 32))
    assert all(0 <= e < 1 for e in fitted.values())
    assert _held_out_error(net, held_out) < 0.9 * default


def test_every_subnet_gives_finite_logits(tiny_stitched):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for s in tiny_stitched.subnets():
            out = tiny_stitched(x, subnet=s)
            assert out.shape == (3, 10) and torch.isfinite(out).all(), s


def test_subnet_costs_are_consistent(tiny_stitched):
    subnets = tiny_stitched.subnets()
    anchors = [s for s in subnets if s.kind == "anchor"]
    assert [a.flops for a in anchors] == sorted(a.flops for a in anchors)
    for s in subnets[3:]:
        assert s.flops > 0 and s.params > 0
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
        ([[1.0]], "Tensor"),
    ],
)
def test_bad_inputs_raise_invalid_input(tiny_stitched, bad, match):
    with pytest.raises(InvalidInput, match=match):
        tiny_stitched(bad, subnet=0)
    assert issubclass(InvalidInput, ValueError)


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
    by_flops = [tiny_stitched.sample_subnet(rng, "flops").id for _ in range(500)]
    assert len(set(by_flops)) > 5
    with pytest.raises(ValueError):
        tiny_stitched.sample_subnet(rng, "nope")
