"""The serving demo stage: `replay` on the tiny model, and `elastic serve-demo` end to end."""

import argparse
import json
import math
import sys
import types

import pytest
import torch

from elastic.serving import Runtime, replay, replay_schedule

KEYS = {"requests", "slo_attainment", "effective_accuracy", "per_subnet_counts", "rejected", "shed"}


def synthetic(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def check_consistent(report, n):
    assert set(report) >= KEYS
    assert report["requests"] == n
    answered = sum(report["per_subnet_counts"].values())
    assert answered == report["answered"]
    assert answered + report["rejected"] + report["shed"] + report["errors"] + report["unanswered"] == n
    assert 0 <= report["effective_accuracy"] <= report["slo_attainment"] <= 1
    assert report["effective_accuracy"] <= report["answered_accuracy"] * answered / n + 1e-9
    json.dumps(report)  # JSON-ready


def test_replay_scores_real_predictions(served_model, served_profile):
    images, _ = synthetic()
    with Runtime(served_model, max_batch_size=8, profile=served_profile) as rt:
        best = max(rt.candidates, key=lambda s: served_model.subnets()[s].accuracy)
        with torch.inference_mode():
            own = served_model(images, subnet=best).argmax(1)  # labels the best subnet gets right
        report = replay(rt, images, own, budgets_ms=[5_000, 60_000], rate_per_s=500, seed=0)
        check_consistent(report, 64)
        assert report["rejected"] == report["shed"] == report["errors"] == report["late"] == 0
        assert report["per_subnet_counts"] == {str(best): 64}  # seconds of budget: the best one
        assert report["effective_accuracy"] == report["slo_attainment"] == 1.0

        wrong = (own + 1) % 10
        report = replay(rt, images, wrong, budgets_ms=[60_000], rate_per_s=math.inf, seed=0)
        check_consistent(report, 64)
        assert report["effective_accuracy"] == 0.0 and report["slo_attainment"] == 1.0


def test_replay_counts_rejections_as_wrong(served_model, served_profile):
    images, labels = synthetic(32, seed=1)
    with Runtime(served_model, max_batch_size=4, profile=served_profile) as rt:
        report = replay(rt, images, labels, budgets_ms=[1e-6], rate_per_s=math.inf, seed=1, requests=40)
    check_consistent(report, 40)
    assert report["rejected"] == 40 and report["rejected_by_reason"] == {"infeasible": 40}
    assert report["effective_accuracy"] == report["slo_attainment"] == 0.0


def test_replay_validates_its_arguments(served_model, served_profile):
    images, labels = synthetic(4)
    with Runtime(served_model, profile=served_profile) as rt:
        with pytest.raises(ValueError):
            replay(rt, images, labels[:3], [100], 10)
        with pytest.raises(ValueError):
            replay(rt, images, labels, [], 10)
        with pytest.raises(ValueError):
            replay(rt, images, labels, [100], 0)


def test_serve_demo_command_adds_serving_to_the_report(served_model, tmp_path, monkeypatch, capsys):
    """`elastic serve-demo` with `elastic.demo.data.fashion_mnist` replaced by synthetic images."""
    import elastic
    from elastic.commands import serve_demo

    model_dir = tmp_path / "model"
    elastic.save(served_model, model_dir)
    images, labels = synthetic(48, seed=2)
    calls = []

    def fashion_mnist(root=None, split="test"):
        calls.append((root, split))
        return images, labels

    monkeypatch.setitem(sys.modules, "elastic.demo.data", types.SimpleNamespace(fashion_mnist=fashion_mnist))
    report_path = tmp_path / "report.json"
    report_path.write_text(json.dumps({"train": {"epochs": 1}}))

    parser = argparse.ArgumentParser()
    serve_demo.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "serve-demo",
            "--model",
            str(model_dir),
            "--data",
            "DATA",
            "--requests",
            "48",
            "--report",
            str(report_path),
            "--profile-repeats",
            "1",
            "--max-batch",
            "4",
            "--budgets",
            "5000,60000",
            "--rate",
            "400",
        ]
    )
    assert args.func(args) == 0
    assert calls == [("DATA", "test")]
    report = json.loads(report_path.read_text())
    assert report["train"] == {"epochs": 1}  # the rest of the report is kept
    serving = report["serving"]
    check_consistent(serving, 48)
    assert serving["policy"] == "elastic" and serving["device"] == "cpu"
    assert (model_dir / "profile-cpu.json").is_file()
    assert "effective accuracy" in capsys.readouterr().out

    # a second run reuses the saved profile
    import elastic.serving.runtime as runtime_module

    def no_measuring(*a, **k):
        raise AssertionError("the saved profile should have been reused")

    monkeypatch.setattr(runtime_module, "measure_latency", no_measuring)
    assert args.func(args) == 0


def test_replay_schedule_scores_given_arrivals_and_budgets(served_model, served_profile):
    images, labels = synthetic(8)
    with Runtime(served_model, max_batch_size=8, profile=served_profile) as rt:
        report = replay_schedule(rt, images, labels, [0.0, 0.001, 0.002, 0.003], [60_000, 60_000, 1e-6, 60_000])
        with pytest.raises(ValueError, match="arrival times"):
            replay_schedule(rt, images, labels, [0.0], [1.0, 2.0])
    assert report["requests"] == 4 and report["rejected"] == 1
    assert report["admitted_slo_attainment"] == 1.0 and report["slo_attainment"] == 0.75
    assert report["answered"] == 3 and report["errors"] == report["shed"] == report["unanswered"] == 0
    # three answered requests in batches of 1+1+1, 2+1 or 3: the per-request mean batch size is one of these
    assert any(report["mean_batch_size"] == pytest.approx(m) for m in (1.0, 5 / 3, 3.0))
