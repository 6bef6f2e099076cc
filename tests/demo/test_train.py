"""The shared training loop: subnet sampling per step, parameter groups, schedule, losses."""

import math

import pytest
import torch
from torch import nn

from elastic.demo.train import FitConfig, augment, distillation_loss, fit, param_groups, warmup_cosine


def _random_data(n=32, shape=(3, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _quiet(**kw):
    return FitConfig(**{"batch_size": 8, "progress": False, **kw})


@pytest.mark.parametrize("policy", ["uniform", "flops"])
def test_fit_draws_one_subnet_per_step(tiny_stitched, policy):
    seen = []
    history = fit(
        tiny_stitched,
        _random_data(16),
        epochs=4,
        config=_quiet(batch_size=4, sampling=policy),
        on_step=lambda step, sid, loss: seen.append((step, sid, loss)),
    )
    assert [s for s, _, _ in seen] == list(range(16))  # 16 images / batch 4 = 4 steps per epoch
    ids = [sid for _, sid, _ in seen]
    assert all(0 <= sid < len(tiny_stitched) for sid in ids)
    assert len(set(ids)) > 3  # different subnets, not one fixed path
    assert sum(history["subnet_steps"]) == 16
    assert history["subnet_steps"] == [ids.count(k) for k in range(len(tiny_stitched))]
    assert len(history["loss"]) == 4 and all(math.isfinite(v) for v in history["loss"])


def test_fit_is_deterministic_for_a_seed(tiny_vit_family):
    import copy

    def run():
        model = copy.deepcopy(tiny_vit_family[0].model)
        fit(model, _random_data(16), epochs=1, config=_quiet(seed=3, crop_padding=2))
        return model.head.weight.detach().clone()

    assert torch.equal(run(), run())


def test_param_groups_split_anchors_and_stitches(tiny_stitched):
    groups = {g["name"]: g for g in param_groups(tiny_stitched, lr=1e-4, stitch_lr=1e-2, weight_decay=0.05)}
    assert set(groups) == {"anchor", "anchor_no_decay", "stitch", "stitch_no_decay"}
    stitch_ids = {id(p) for p in tiny_stitched.stitches.parameters()}
    assert {id(p) for p in groups["stitch"]["params"] + groups["stitch_no_decay"]["params"]} == stitch_ids
    assert groups["stitch"]["lr"] == 1e-2 and groups["anchor"]["lr"] == 1e-4
    assert groups["anchor_no_decay"]["weight_decay"] == 0 and groups["anchor"]["weight_decay"] == 0.05
    no_decay = {id(p) for p in groups["anchor_no_decay"]["params"]}
    model = tiny_stitched.family[0].model
    assert id(model.pos_embed) in no_decay and id(model.cls_token) in no_decay
    assert id(model.blocks[0].norm1.weight) in no_decay and id(model.head.bias) in no_decay
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(tiny_stitched.parameters()))


def test_zero_anchor_lr_freezes_the_anchors(tiny_stitched):
    before = {k: v.clone() for k, v in tiny_stitched.family.state_dict().items()}
    stitches_before = {k: v.clone() for k, v in tiny_stitched.stitches.state_dict().items()}
    seen = []
    fit(
        tiny_stitched,
        _random_data(),
        epochs=2,
        config=_quiet(lr=0.0, stitch_lr=1e-2),
        on_step=lambda step, sid, loss: seen.append(sid),
    )
    assert min(seen) >= len(tiny_stitched.family)  # whole anchors have nothing to train
    assert all(torch.equal(before[k], v) for k, v in tiny_stitched.family.state_dict().items())
    assert any(not torch.equal(stitches_before[k], v) for k, v in tiny_stitched.stitches.state_dict().items())
    assert not any(p.requires_grad for p in tiny_stitched.family.parameters())


def test_distillation_loss_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(4, 10)
    assert float(distillation_loss(a, a.clone(), 2.0)) == pytest.approx(0, abs=1e-6)
    loss = distillation_loss(a, torch.randn(4, 10), 2.0)
    assert math.isfinite(float(loss)) and float(loss) > 0
    huge = distillation_loss(a * 1e4, -a * 1e4, 1.0)
    assert math.isfinite(float(huge))


def test_fit_with_distillation_from_the_largest_anchor(tiny_stitched):
    import copy

    teacher = copy.deepcopy(tiny_stitched.family[2]).eval()
    history = fit(
        tiny_stitched,
        _random_data(),
        epochs=1,
        config=_quiet(distill_alpha=0.5, distill_temperature=2.0),
        teacher=teacher,
    )
    assert all(math.isfinite(v) for v in history["loss"])
    with pytest.raises(ValueError, match="teacher"):
        fit(tiny_stitched, _random_data(), epochs=1, config=_quiet(distill_alpha=0.5))


def test_fit_learns_a_separable_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 1, 4, 4)
    y = (x[:, 0, 0, 0] > 0).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    history = fit(
        model, (x, y), epochs=10, config=FitConfig(batch_size=32, lr=0.05, crop_padding=0, flip=False, progress=False)
    )
    assert history["loss"][-1] < 0.5 * history["loss"][0]


def test_lora_stitches_train_their_low_rank_factors(tiny_vit_family):
    from elastic import StitchedNet

    net = StitchedNet(tiny_vit_family, lora_rank=2)
    net.init_stitches(torch.randn(8, 3, 32, 32))
    fit(net, _random_data(16), epochs=1, config=_quiet(lr=0.0, stitch_lr=1e-2, sampling="flops"))
    assert any(float(layer.lora_b.detach().abs().sum()) > 0 for layer in net.stitches.values())


def test_warmup_cosine_schedule():
    f = warmup_cosine(100, warmup=0.1, min_ratio=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    values = [f(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert f(100) == pytest.approx(0.01)


def test_augment_keeps_shape_and_is_identity_when_off():
    x, _ = _random_data(8, (1, 28, 28))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, g, padding=0, flip=False), x)
    y = augment(x, g, padding=2, flip=True)
    assert y.shape == x.shape
    flipped = augment(x, torch.Generator().manual_seed(0), padding=0, flip=True)
    for a, b in zip(flipped, x, strict=True):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))


def test_anchor_share_trains_whole_anchors_that_often(tiny_stitched):
    seen = []
    fit(
        tiny_stitched,
        _random_data(16),
        epochs=10,
        config=_quiet(batch_size=4, anchor_share=0.5),
        on_step=lambda step, sid, loss: seen.append(sid),
    )
    anchors = sum(sid < len(tiny_stitched.family) for sid in seen)
    assert 10 <= anchors <= 35  # 40 steps, half of them anchors (+ uniform draws that hit one)
