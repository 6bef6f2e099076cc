"""`elastic demo` end to end on a small Fashion-MNIST subset: report schema, real accuracies,
the anchor cache, and `elastic info` on the saved model."""

import argparse
import json
from dataclasses import replace

import pytest
import torch

import elastic
from elastic.demo.data import DEBIAN_ROOT, fashion_mnist

pytestmark = pytest.mark.skipif(
    not (DEBIAN_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_ROOT} missing)",
)

TINY = dict(
    widths=(16, 32, 64),
    head_dim=16,
    depth=3,
    anchor_epochs=2.0,
    stitch_epochs=0.5,
    train_size=1200,
    test_size=400,
    batch_size=64,
    calibration_size=64,
    latency_repeats=2,
)


def _run_cli(argv):
    from elastic.commands import demo

    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny demo through the CLI code path (`--quick` swapped for the tiny config)."""
    from elastic.demo.pipeline import DemoConfig

    out = tmp_path_factory.mktemp("demo")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DemoConfig, "quick", classmethod(lambda cls, **kw: replace(cls(**TINY), **kw)))
        rc = _run_cli(["demo", "--quick", "--out", str(out), "--cache", str(cache), "--no-progress"])
    assert rc == 0
    return out, cache, json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_report_schema(demo_run):
    out, _, report = demo_run
    assert {"dataset", "anchors", "subnets", "pareto", "interpolation", "timings", "config"} <= set(report)
    assert report["dataset"]["name"] == "fashion-mnist" and report["dataset"]["eval_split"] == "test"
    assert report["dataset"]["eval_images"] == 400
    assert [a["name"] for a in report["anchors"]] == ["vit-ti", "vit-s", "vit-b"]
    for a in report["anchors"]:
        assert set(a) >= {"name", "accuracy", "flops", "params"} and a["flops"] > 0
    ids = [s["id"] for s in report["subnets"]]
    assert ids == list(range(len(ids))) and len(ids) == 3 + 2 * 7  # depth 3: 7 stitches per pair
    for s in report["subnets"]:
        assert set(s) >= {"id", "kind", "description", "flops", "params", "accuracy", "latency_ms"}
        assert set(s["latency_ms"]) == {"1", "8"} and all(v > 0 for v in s["latency_ms"].values())
        assert 0 <= s["accuracy"] <= 1
    assert set(report["pareto"]) <= set(ids) and report["pareto"]
    interp = report["interpolation"]
    assert set(interp) >= {"front_between_anchors", "max_shortfall_points", "holds", "per_subnet"}
    assert interp["front_between_anchors"] == len(interp["per_subnet"])
    assert {"data", "anchors", "stitch_init", "stitch_train", "evaluate", "latency", "total"} <= set(report["timings"])
    assert report["config"]["widths"] == [16, 32, 64]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = report["run"]  # what made it
    assert run["command"].startswith("elastic demo --quick") or "elastic demo --quick" in run["command"]
    assert run["date"][:2] == "20" and isinstance(run["uncommitted_source_changes"], list)
    assert sorted(p.name for p in out.iterdir()) == [
        "model",
        "pareto.png",
        "report.json",
        "report.md",
    ]  # no temp debris


@pytest.mark.slow
def test_accuracies_are_real_and_match_the_saved_model(demo_run):
    out, _, report = demo_run
    model = elastic.load(out / "model")
    x, y = fashion_mnist(split="test")
    x, y = x[:400], y[:400]
    from elastic.demo.evaluate import accuracy

    for s in report["subnets"][:3] + report["subnets"][-2:]:
        assert accuracy(model, x, y, subnet=s["id"]) == pytest.approx(s["accuracy"])
        assert model.subnets()[s["id"]].accuracy == pytest.approx(s["accuracy"])  # in the manifest
    # chance is 10%; the standard error on 400 images is 1.5 points
    assert min(a["accuracy"] for a in report["anchors"]) > 0.25
    stitched = [s["accuracy"] for s in report["subnets"] if s["kind"] == "stitch"]
    assert sum(stitched) / len(stitched) > 0.2


@pytest.mark.slow
def test_info_reads_the_saved_model(demo_run, capsys):
    from elastic.cli import main

    out, _, report = demo_run
    capsys.readouterr()
    assert main(["info", str(out / "model")]) == 0
    text = capsys.readouterr().out
    assert f"StitchedNet over vit-ti, vit-s, vit-b: {len(report['subnets'])} subnets" in text
    assert "vit-ti[0:1] -> vit-s[1:3]" in text


@pytest.mark.slow
def test_anchor_cache_reloads_identical_weights(demo_run):
    from elastic.demo.pipeline import DemoConfig, load_anchors

    _, cache, report = demo_run
    cfg = DemoConfig(**TINY)
    folder = next((cache / "anchors").iterdir())
    assert report["training"]["anchor_cache"] == f"anchors/{folder.name}"  # relative to the cache root
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.json",
        "vit-b.safetensors",
        "vit-s.safetensors",
        "vit-ti.safetensors",
    ]
    family, meta = load_anchors(cfg, folder)
    assert set(meta["accuracy"]) == {"vit-ti", "vit-s", "vit-b"}
    from elastic.demo.evaluate import accuracy

    x, y = fashion_mnist(split="test")
    for anchor in family:  # the trained weights came back: same accuracy as right after training
        assert accuracy(anchor, x[:400], y[:400]) == pytest.approx(meta["accuracy"][anchor.name])
    # corrupt cache: ignored (retrain), not a crash
    (folder / "vit-s.safetensors").write_bytes(b"garbage")
    assert load_anchors(cfg, folder) is None


def test_config_key_changes_with_what_decides_the_anchors():
    from elastic.demo.pipeline import DemoConfig

    base = DemoConfig(**TINY)
    assert base.anchor_key("data") == DemoConfig(**TINY).anchor_key("data")
    assert base.anchor_key("data") != base.anchor_key("other data")
    assert base.anchor_key("data") != replace(base, seed=1).anchor_key("data")
    assert base.anchor_key("data") != replace(base, anchor_epochs=3).anchor_key("data")
    for sn_net_only in (dict(stitch_epochs=3), dict(finetune_lr=0.1), dict(sampling="flops"), dict(anchor_share=0.5)):
        assert base.anchor_key("data") == replace(base, **sn_net_only).anchor_key("data")


def test_interpolation_measures_the_front_against_the_anchor_line():
    from elastic.demo.report import anchor_line, interpolation
    from elastic.subnet import Subnet

    subnets = [
        Subnet(0, "anchor", "a", 100, 1, 0.80),
        Subnet(1, "anchor", "b", 300, 1, 0.90),
        Subnet(2, "stitch", "s1", 200, 1, 0.84),  # line 0.85: 1 point short
        Subnet(3, "stitch", "s2", 250, 1, 0.83),  # dominated by s1: not on the front
        Subnet(4, "stitch", "s3", 50, 1, 0.70),  # cheaper than every anchor: not between
        Subnet(5, "stitch", "s4", 280, 1, 0.895),
    ]  # line 0.89: half a point above
    assert anchor_line(subnets[:2], 200) == pytest.approx(0.85)
    assert anchor_line(subnets[:2], 50) is None
    result = interpolation(subnets, tolerance=1.5)
    assert [r["id"] for r in result["per_subnet"]] == [2, 5]
    assert result["front_between_anchors"] == 2
    assert result["max_shortfall_points"] == pytest.approx(1.0)
    assert result["holds"]
    assert not interpolation(subnets, tolerance=0.5)["holds"]


def test_shared_prefix_evaluation_equals_running_each_subnet(tiny_stitched):
    from elastic.demo.evaluate import _stitched_logits, accuracy, evaluate_subnets

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g)
    with torch.no_grad():
        shared = _stitched_logits(tiny_stitched, x)
        for s in tiny_stitched.subnets():
            torch.testing.assert_close(shared[s.id], tiny_stitched(x, s.id), rtol=1e-5, atol=1e-5)
    result = evaluate_subnets(tiny_stitched, x, y, batch_size=10, progress=False)
    assert result == {s.id: accuracy(tiny_stitched, x, y, subnet=s.id, batch_size=7) for s in tiny_stitched.subnets()}
    assert [s.accuracy for s in tiny_stitched.subnets()] == [result[k] for k in range(len(tiny_stitched))]


def test_latency_has_every_subnet_and_batch_size(tiny_stitched):
    from elastic.demo.latency import latency_table

    lat = latency_table(tiny_stitched, batch_sizes=(1, 2), repeats=2, warmup=1, subnets=[0, 5])
    assert set(lat) == {0, 5} and all(set(v) == {1, 2} and min(v.values()) > 0 for v in lat.values())


def test_markdown_report_shows_the_json_numbers():
    from elastic.demo.report import markdown_report

    report = {
        "run": {"command": "make demo", "commit": "abc1234", "date": "2026-01-01"},
        "anchors": [
            {"name": "a", "accuracy": 0.8123, "flops": 1_500_000, "params": 1000, "accuracy_standalone": 0.82},
            {"name": "b", "accuracy": 0.9, "flops": 4_000_000, "params": 4000, "accuracy_standalone": 0.91},
        ],
        "subnets": [{"id": i} for i in range(5)],
        "pareto": [0, 3, 1],
        "interpolation": {
            "front_between_anchors": 1,
            "max_shortfall_points": 0.5,
            "tolerance_points": 1.5,
            "holds": True,
        },
        "serving": {
            "requests": 10,
            "offered_rate_per_s": 99.6,
            "budgets_ms": [2, 9],
            "policy": "elastic",
            "slo_attainment": 0.9,
            "admitted_slo_attainment": 0.95,
            "effective_accuracy": 0.7,
            "rejected": 1,
            "shed": 0,
            "late": 0,
            "mean_batch_size": 2.5,
        },
    }
    md = markdown_report(report)
    assert "| a | 81.23 % | 1.50 | 1,000 |" in md
    assert "5 subnets, 3 on the accuracy/FLOPs Pareto front" in md
    assert "within 0.50 points" in md and "holds" in md
    assert "82.00 % / 91.00 %" in md
    assert "| 90.0 % | 95.0 % | 70.0 % | 1 | 0 | 0 | 2.5 |" in md
    assert "commit abc1234" in md
