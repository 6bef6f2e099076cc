"""`elastic demo --builder learngene` end to end on a small Fashion-MNIST subset: the report,
real accuracies, the teacher and distillation caches, and `elastic info` on the saved pool."""

import argparse
import json
from dataclasses import replace

import pytest
import torch

from elastic.demo.data import DEBIAN_ROOT

pytestmark = pytest.mark.skipif(
    not (DEBIAN_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_ROOT} missing)",
)

TINY = dict(
    widths=(16, 32, 64),
    head_dim=16,
    depth=4,
    anchor_epochs=2.0,
    train_size=1200,
    test_size=400,
    batch_size=64,
    latency_repeats=2,
)


def _run_cli(argv):
    from elastic.commands import demo

    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The tiny demo twice through the CLI code path (`--quick` swapped for the tiny config)."""
    from elastic.demo.pipeline import DemoConfig

    cache = tmp_path_factory.mktemp("cache")
    outs, reports = [], []
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DemoConfig, "quick", classmethod(lambda cls, **kw: replace(cls(**TINY), **kw)))
        for _ in range(2):
            out = tmp_path_factory.mktemp("learngene")
            argv = ["demo", "--builder", "learngene", "--quick", "--out", str(out), "--cache", str(cache)]
            assert _run_cli(argv + ["--no-progress", "--threads", "1"]) == 0
            outs.append(out)
            reports.append(json.loads((out / "report.json").read_text()))
    torch.set_num_threads(threads)
    return outs, reports


@pytest.mark.slow
def test_report_holds_descendants_costs_accuracies_and_provenance(demo_runs):
    outs, (report, _) = demo_runs
    assert report["command"].startswith("elastic demo --builder learngene --quick")
    assert report["commit"] and report["date"]
    assert report["dataset"]["eval_images"] == 400
    assert report["teacher"]["name"] == "vit-b" and report["teacher"]["source"] == "trained here"
    assert report["teacher"]["eval_accuracy"] > 0.3  # 2 epochs on 1200 real images: well above chance
    names = [a["name"] for a in report["auxiliary_models"]]
    assert names == ["aux-16x2", "aux-32x2", "aux-64x2"]  # half the teacher's depth
    ids = [s["id"] for s in report["subnets"]]
    assert ids == list(range(3 + 2 * 4))
    for s in report["subnets"]:
        assert (
            s["kind"] == ("anchor" if s["id"] < 3 else "learngene")
            and s["flops"] > 0
            and s["params"] > 0
            and 0 <= s["accuracy"] <= 1
        )
    assert set(report["pareto"]) <= set(ids) and report["pareto"]
    cmp = report["comparison"]
    assert cmp["pool_weight_bytes"] > 0 and 0 < cmp["bytes_ratio"] < 1
    assert cmp["snnet_family_covering_range"]["anchors"][0] == "vit-ti"
    if "front" in cmp:  # results/demo/report.json is the full demo: not this tiny one
        assert cmp["snnet_same_demo_config"] is False
        assert "not comparable" in (outs[0] / "report.md").read_text()
    inits = report["training"]["stitch_init_accuracy_before_finetune"]
    assert set(inits) == {"random", "least_squares", "transforms_transpose", "transforms"}
    losses = report["training"]["distill_loss_per_epoch"]
    assert set(losses) >= {"ce", "logits", "blocks", "attn", "total"}
    md = (outs[0] / "report.md").read_text()
    assert "| id | descendant |" in md and "Stored weights" in md


@pytest.mark.slow
def test_second_run_reuses_the_teacher_and_the_distillation(demo_runs):
    _, (first, second) = demo_runs
    assert second["teacher"]["source"] == "learngene teacher cache"
    assert second["teacher"]["eval_accuracy"] == first["teacher"]["eval_accuracy"]
    assert second["training"]["distill_resumed_from_epoch"] == 1  # --quick distils one epoch
    assert second["training"]["distill_loss_per_epoch"] == first["training"]["distill_loss_per_epoch"]


@pytest.mark.slow
def test_info_reads_the_saved_pool(demo_runs, capsys):
    outs, (report, _) = demo_runs
    from elastic.commands import info

    parser = argparse.ArgumentParser()
    info.register(parser.add_subparsers())
    args = parser.parse_args(["info", str(outs[0] / "model")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("LearngenePool over aux-16x2, aux-32x2, aux-64x2")
    assert report["subnets"][3]["description"] in text


def test_compare_fronts_takes_snnets_best_accuracy_at_no_more_flops():
    from elastic.demo.learngene import compare_fronts
    from elastic.subnet import Subnet

    subnets = [Subnet(0, "learngene", "a", 100, 1, 0.7), Subnet(1, "learngene", "b", 300, 1, 0.8)]
    rows = compare_fronts(subnets, [(200, 0.75), (250, 0.78), (400, 0.9)])
    assert [r["snnet_best_at_or_below"] for r in rows] == [None, 0.78]
    assert [r["delta_points"] for r in rows] == [None, 2.0]


def test_snnet_family_bytes_takes_the_anchors_needed_to_reach_the_range():
    from elastic.demo.learngene import snnet_family_bytes
    from elastic.demo.pipeline import DemoConfig

    cfg = DemoConfig(depth=2)
    small = snnet_family_bytes(cfg, 1)
    assert small["anchors"] == ["vit-ti"]
    two = snnet_family_bytes(cfg, small["anchor_flops"][0] + 1)
    everything = snnet_family_bytes(cfg, 10**12)
    assert two["anchors"] == ["vit-ti", "vit-s"] and everything["anchors"] == ["vit-ti", "vit-s", "vit-b"]
    assert small["bytes"] < two["bytes"] < everything["bytes"]
