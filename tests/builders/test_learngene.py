"""LearngenePool: distillation losses, auxiliary models equal to timm, descendants, stitch
inits, the resumable cache, save/load, `elastic info` and serving."""

import argparse

import pytest
import timm
import torch

import elastic
from elastic.anchors import AnchorFamily
from elastic.builders.learngene import LearngenePool, paired_configs
from elastic.builders.learngene_distill import DistillConfig, WidthTransforms, distill, matched_positions
from elastic.errors import UnknownSubnet, UnsupportedArchitecture

IMG = 32


def aux_spec(width, depth, label):
    kwargs = dict(
        embed_dim=width, num_heads=max(1, width // 16), depth=depth, img_size=IMG, patch_size=8, num_classes=10
    )
    return ("vit_tiny_patch16_224", kwargs, label)


STUDENTS = [aux_spec(16, 2, "aux-16"), aux_spec(32, 2, "aux-32"), aux_spec(64, 2, "aux-64")]
RECIPE = DistillConfig(batch_size=32, lr=3e-3, seed=0)


def make_teacher():
    torch.manual_seed(0)
    teacher = timm.create_model(
        "vit_tiny_patch16_224", embed_dim=64, num_heads=4, depth=4, img_size=IMG, patch_size=8, num_classes=10
    )
    with torch.no_grad():  # peaked logits, so the soft cross-entropy has something to learn
        teacher.head.weight.mul_(20)
    return teacher.eval()


def make_data(n=192):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, IMG, IMG, generator=g), torch.randint(0, 10, (n,), generator=g)


def make_students(specs=STUDENTS):
    torch.manual_seed(2)
    return AnchorFamily.from_timm(specs)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on the shared 2-core machine two threads spin at every barrier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pool():
    net = LearngenePool.distill(make_teacher(), make_students(), make_data(), 3, RECIPE)
    top = max(s.flops for s in net.subnets())
    net.set_accuracies({s.id: round(0.5 + 0.4 * s.flops / top, 4) for s in net.subnets()})
    return net


def test_matched_positions_follow_the_official_front_end_points():
    assert matched_positions(6, 12, 3) == [(1, 3), (3, 7), (5, 11)]
    assert matched_positions(2, 4, 3) == [(0, 1), (1, 3)]


def test_paired_configs_are_sn_net_v1_for_equal_depths():
    assert paired_configs(3, 3) == [[(0, 0), (0, 1), (1, 0), (1, 1)], [(1, 2), (2, 1), (2, 2)]]
    assert sum(len(w) for w in paired_configs(12, 12)) == 34


def test_distillation_losses_decrease(pool):
    history = pool.distill_result.history
    for term in ("logits", "blocks", "attn", "total", *(f"total/{n}" for n in pool.family.names)):
        assert len(history[term]) == 3
        assert history[term][-1] < history[term][0], (term, history[term])


def test_each_auxiliary_model_alone_equals_its_timm_forward(pool):
    x = torch.randn(4, 3, IMG, IMG)
    with torch.no_grad():
        for k, adapter in enumerate(pool.family):
            assert pool.path(k) is None and pool.subnets()[k].description == adapter.name
            assert torch.equal(pool(x, subnet=k), adapter.model(x))


def test_stitched_descendants_give_finite_logits_and_consistent_costs(pool):
    x = torch.randn(3, 3, IMG, IMG)
    subnets = pool.subnets()
    assert [s.id for s in subnets] == list(range(len(subnets))) == list(range(3 + 2 * 4))
    assert [s.kind for s in subnets] == ["anchor"] * 3 + ["learngene"] * 8
    assert subnets[0].flops == min(s.flops for s in subnets)  # the smallest auxiliary model
    with torch.no_grad():
        for s in subnets:
            out = pool(x, subnet=s)
            assert out.shape == (3, 10) and torch.isfinite(out).all(), s
    total = sum(p.numel() for p in pool.parameters())
    assert max(s.params for s in subnets) < total
    with pytest.raises(UnknownSubnet):
        pool(x, subnet=len(subnets))


def test_transform_init_recovers_a_map_between_consistent_transforms():
    """If student b's transform is M times student a's, the stitch a -> b must start as M."""
    family = make_students(STUDENTS[:2])
    net = LearngenePool(family)
    torch.manual_seed(3)
    ta, tb = WidthTransforms(64, 16, [(0, 1), (1, 3)]), WidthTransforms(64, 32, [(0, 1), (1, 3)])
    m = torch.randn(32, 16)
    with torch.no_grad():
        for la, lb in zip(ta.blocks, tb.blocks, strict=True):
            la.weight.copy_(ta.blocks[0].weight)
            la.bias.copy_(ta.blocks[0].bias)
            lb.weight.copy_(m @ la.weight)
            lb.bias.copy_(m @ la.bias + 0.5)
    net.init_stitches_from_transforms([ta, tb])
    for layer in net.stitches.values():
        torch.testing.assert_close(layer.weight, m, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.bias, torch.full((32,), 0.5), atol=1e-4, rtol=1e-4)


def test_least_squares_init_fits_calibration_activations():
    net = LearngenePool(make_students()).eval()
    errors = net.init_stitches(torch.randn(16, 3, IMG, IMG))
    assert set(errors) == set(net.stitches) and all(0 <= e < 1 for e in errors.values())


def test_equal_widths_are_stitched_by_the_identity():
    family = make_students([aux_spec(32, 2, "aux-32x2"), aux_spec(32, 3, "aux-32x3")])
    net = LearngenePool(family).eval()
    assert len(net.stitches) == 0
    stitched = [s for s in net.subnets() if net.path(s) is not None]
    assert stitched and all(net.path(s).layer is None for s in stitched)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        path = net.path(stitched[0])
        front, back = family[path.front], family[path.back]
        h = front.forward_blocks(front.stem(x), 0, path.front_stop)
        expected = back.head(back.forward_blocks(h, path.back_start, back.depth))
        assert torch.equal(net(x, stitched[0]), expected)


def test_distillation_rejects_a_teacher_of_another_input_size():
    teacher = timm.create_model("vit_tiny_patch16_224", embed_dim=32, num_heads=2, depth=2, img_size=16, patch_size=8)
    with pytest.raises(UnsupportedArchitecture, match="teacher takes"):
        distill(teacher, make_students(STUDENTS[:1]), make_data(8), 1)


def test_distillation_resumes_from_its_cache(tmp_path):
    """An interrupted run continued from the cache ends where an uninterrupted one does."""
    data, cfg = make_data(96), DistillConfig(batch_size=32, seed=0)
    teacher = make_teacher()
    straight = make_students(STUDENTS[:2])
    full = distill(teacher, straight, data, 2, cfg)

    import elastic.builders.learngene_distill as ld

    original, calls = ld._save_checkpoint, []

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt  # interrupted after the first epoch was written

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ld, "_save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            distill(teacher, make_students(STUDENTS[:2]), data, 2, cfg, cache_dir=tmp_path)
    assert calls == [1]
    resumed_family = make_students(STUDENTS[:2])
    resumed = distill(teacher, resumed_family, data, 2, cfg, cache_dir=tmp_path)
    assert resumed.resumed_from_epoch == 1
    for a, b in zip(straight.state_dict().values(), resumed_family.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert resumed.history["total"] == pytest.approx(full.history["total"], rel=1e-5)
    again = distill(teacher, make_students(STUDENTS[:2]), data, 2, cfg, cache_dir=tmp_path)
    assert again.resumed_from_epoch == 2  # finished: loaded, not trained


def test_save_load_round_trip_and_info(pool, tmp_path, capsys):
    elastic.save(pool, tmp_path / "pool")
    loaded = elastic.load(tmp_path / "pool", builder="LearngenePool")
    assert isinstance(loaded, LearngenePool)
    assert loaded.subnets() == pool.subnets()  # ids, costs and accuracies
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        for s in pool.subnets():
            assert torch.equal(loaded(x, s.id), pool(x, s.id))
    from elastic.commands import info

    parser = argparse.ArgumentParser()
    info.register(parser.add_subparsers())
    args = parser.parse_args(["info", str(tmp_path / "pool")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "LearngenePool over aux-16, aux-32, aux-64" in out and "aux-16[0:1] -> aux-32[0:2]" in out


def test_the_runtime_serves_the_pool(pool):
    from elastic.serving import Runtime, measure_latency

    profile = measure_latency(pool, torch.zeros(3, IMG, IMG), (1, 2), "cpu", repeats=2, warmup=1)
    with Runtime(pool, max_batch_size=2, profile=profile) as rt:
        x = torch.randn(3, IMG, IMG)
        best = max(pool.subnets(), key=lambda s: s.accuracy).id
        assert rt.infer(x, budget_ms=60_000.0).subnet == best
        for budget in (float("inf"), 60_000.0):  # inf = no budget
            result = rt.infer(x, budget_ms=budget)
            assert result.met_budget and result.subnet in rt.candidates
            with torch.inference_mode():
                expected = pool(x.unsqueeze(0), subnet=result.subnet)[0]
            torch.testing.assert_close(result.output, expected, atol=1e-5, rtol=1e-5)


def test_every_pair_small_to_large_with_nearest_off():
    net = LearngenePool(make_students(), nearest=False)
    pairs = {(p.front, p.back) for p in net.paths if p is not None}
    assert pairs == {(0, 1), (0, 2), (1, 2)} and len(net.subnets()) == 3 + 3 * 4
    assert all(p.front < p.back for p in net.paths if p is not None)  # small to large


def test_paired_configs_map_back_starts_across_depths():
    # front depth 2, back depth 4: back starts at the same relative depth
    assert paired_configs(2, 4) == [[(0, 0), (0, 2), (1, 0), (1, 2)]]


def test_pool_fine_tuning_draws_random_descendants():
    from elastic.demo.train import FitConfig, fit

    net = LearngenePool(make_students())
    net.init_stitches(torch.randn(8, 3, IMG, IMG))
    history = fit(net, make_data(64), 2, FitConfig(batch_size=8, progress=False, seed=0))
    steps = history["subnet_steps"]
    assert sum(steps) == 16 and sum(1 for n in steps if n) >= 5  # uniform draws over 11 subnets


def test_every_descendant_pauses_between_blocks_and_gives_its_forward_bit_for_bit(pool, drain):
    x = torch.randn(2, 3, IMG, IMG)
    with torch.inference_mode():
        for s in pool.subnets():
            fractions = pool.stage_fractions(s.id)
            assert all(0 < a < b < 1 for a, b in zip(fractions, fractions[1:], strict=False))
            y, pauses = drain(pool.forward_stages(x, s.id))
            assert torch.equal(y, pool(x, s.id))
            assert pauses == len(fractions) > 0
            assert len(pool.stage_pieces(s.id)) == len(fractions) + 1  # what the staged forward ran
