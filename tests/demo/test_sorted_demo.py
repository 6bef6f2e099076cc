"""Sorted training (sandwich rule, gradient accumulation, in-place distillation) and the
SortedNet demo end to end on a small slice of real Fashion-MNIST."""

import json
import random

import pytest
import torch

import elastic
from elastic import SortedNet
from elastic.demo.sorted_train import SortedFitConfig, _accumulate, fit_sorted, step_subnets

KWARGS = dict(embed_dim=32, depth=2, num_heads=2, img_size=28, patch_size=7, in_chans=1, num_classes=10)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SortedNet.from_timm(
        "vit_tiny_patch16_224", KWARGS, "vit-32", depths=(1, 2), widths=(16, 32), mlp_ratios=(2, 4)
    )


def test_sandwich_step_trains_largest_smallest_and_k_random(net):
    rng = random.Random(0)
    largest, smallest = net.largest().id, net.smallest().id
    seen = set()
    for _ in range(50):
        ids = step_subnets(net, rng, SortedFitConfig(random_subnets=3))
        assert ids[:2] == [largest, smallest] and len(ids) == 5
        assert not {largest, smallest} & set(ids[2:])
        seen.update(ids[2:])
    assert seen == set(range(len(net))) - {largest, smallest}


def test_sorted_sampling_can_lean_towards_large_subnets(net):
    rng = random.Random(0)
    n = len(net)
    uniform = [i for _ in range(300) for i in step_subnets(net, rng, SortedFitConfig(schedule="sorted"))]
    leaning = [
        i for _ in range(300) for i in step_subnets(net, rng, SortedFitConfig(schedule="sorted", sorted_bias=4.0))
    ]
    assert len(set(uniform)) == n and len(uniform) == 600
    assert sum(leaning) / len(leaning) > sum(uniform) / len(uniform) + 1  # ids are sorted by FLOPs
    with pytest.raises(ValueError):
        step_subnets(net, rng, SortedFitConfig(schedule="nope"))


def test_gradients_accumulate_to_the_mean_of_the_subnets(net):
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    ids = [net.largest().id, net.smallest().id, 3]
    cfg = SortedFitConfig(distill_alpha=0.5, distill_temperature=2.0)
    net.zero_grad(set_to_none=True)
    _accumulate(net, x, y, ids, cfg)
    got = {n: p.grad.clone() for n, p in net.named_parameters()}
    # by hand: the largest on the labels, the others half labels, half its detached logits
    net.zero_grad(set_to_none=True)
    teacher = net(x, ids[0])
    losses = [torch.nn.functional.cross_entropy(teacher, y)]
    target = torch.log_softmax(teacher.detach() / 2, -1)
    for sid in ids[1:]:
        out = net(x, sid)
        kd = torch.nn.functional.kl_div(torch.log_softmax(out / 2, -1), target, reduction="batchmean", log_target=True)
        losses.append(0.5 * torch.nn.functional.cross_entropy(out, y) + 0.5 * 4 * kd)
    (sum(losses) / len(ids)).backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(got[n], p.grad, atol=1e-6, rtol=1e-5)
    net.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_sorted_training_teaches_the_largest_and_the_smallest_subnet():
    from elastic.demo.data import fashion_mnist

    x, y = fashion_mnist(None, "train")
    train, held_out = (x[:1024], y[:1024]), (x[1024:1536], y[1024:1536])
    torch.manual_seed(0)
    net = SortedNet.from_timm("vit_tiny_patch16_224", KWARGS, "vit-32", depths=(1, 2), widths=(16, 32))

    def held_out_loss(sid):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(net.eval()(held_out[0], sid), held_out[1]))

    ends = (net.largest().id, net.smallest().id)
    before = [held_out_loss(sid) for sid in ends]
    history = fit_sorted(net, train, 2, SortedFitConfig(batch_size=128, lr=5e-3, seed=0))
    after = [held_out_loss(sid) for sid in ends]
    assert all(a < b - 0.1 for a, b in zip(after, before, strict=True)), (before, after)
    assert len(history["loss"]) == 2
    assert history["subnet_steps"][ends[0]] == history["subnet_steps"][ends[1]] == 16
    assert sum(history["subnet_steps"]) == 16 * 4


@pytest.mark.slow
def test_sorted_demo_end_to_end_writes_report_table_and_model(tmp_path):
    from elastic.demo.pipeline import DemoConfig
    from elastic.demo.sorted import SortedDemoConfig, run_sorted_demo

    cfg = DemoConfig.quick(depth=2, anchor_epochs=0.3, train_size=1024, test_size=300, batch_size=128)
    scfg = SortedDemoConfig(
        depth_drop=(1, 0), epochs=0.5, importance_images=128, batch_size=128, latency_repeats=1
    )  # 2 depths x 4 widths x 2 MLP ratios = 16 subnets
    fake_snnet = tmp_path / "snnet.json"
    fake_snnet.write_text(
        json.dumps(
            {
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()},
                "subnets": [
                    {"id": 0, "description": "vit-ti", "flops": 200_000, "accuracy": 0.5},
                    {"id": 1, "description": "vit-b", "flops": 10**9, "accuracy": 0.6},
                    {"id": 2, "description": "tiny", "flops": 1, "accuracy": 0.1},
                ],
                "pareto": [2, 0, 1],
            }
        )
    )
    report = run_sorted_demo(cfg, scfg, tmp_path / "out", cache_dir=tmp_path / "cache", snnet_report=fake_snnet)
    rows = report["subnets"]
    assert len(rows) == 16 and [r["flops"] for r in rows] == sorted(r["flops"] for r in rows)
    for r in rows:
        for key in ("accuracy", "accuracy_sliced", "accuracy_reordered"):
            assert 0 <= r[key] <= 1
    full = rows[-1]
    for key in ("accuracy_sliced", "accuracy_reordered"):  # the full subnet is the anchor, reordered or not
        assert full[key] == pytest.approx(report["anchor"]["accuracy"], abs=0.004)
    assert report["anchor"]["source"] == "trained here" and report["reorder"]["max_logit_change"] <= 1e-4
    sn = report["snnet"]
    assert sn["same_anchors"] and [p["snnet_id"] for p in sn["front"]] == [2, 0, 1]
    assert sn["front"][0]["sorted_id"] is None and sn["front"][2]["sorted_id"] == report["pareto"][-1]
    w = report["weights"]
    assert w["bytes"] == 4 * rows[-1]["params"] and 0 < w["ratio_to_snnet"] < 1
    assert report["commit"] and report["date"] and "sorted" in report["command"]
    table = [line for line in (tmp_path / "out" / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert sum(line.split(" | ")[1].startswith("vit-b[") for line in table) == 16
    loaded = elastic.load(tmp_path / "out" / "model")
    assert [s.accuracy for s in loaded.subnets()] == [r["accuracy"] for r in rows]
    # a second run reads the anchor this one cached
    again = run_sorted_demo(
        cfg,
        SortedDemoConfig(depth_drop=(0,), epochs=0.1, importance="none", latency_repeats=1),
        tmp_path / "o2",
        cache_dir=tmp_path / "cache",
        snnet_report=fake_snnet,
    )
    assert "sorted-anchor" in again["anchor"]["source"]
    assert again["anchor"]["accuracy"] == report["anchor"]["accuracy"]
