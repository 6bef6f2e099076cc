"""The targets summary over hand-written results: scheduler and overhead verdicts, missing files."""

import argparse
import json

from elastic.bench import targets
from elastic.bench.overhead import EVICTED


def _row(model, subnet, batch, call, verdict, added=150.0, ratio=1.2):
    target = {"added_us_per_request": 100.0} if batch == 1 else {"ratio": 1.15}
    return {
        "model": model,
        "subnet": subnet,
        "batch": batch,
        "call": call,
        "added_us_per_request": added,
        "ratio": ratio,
        "target": target | {"verdict": verdict, "pass": verdict == "pass"},
    }


def test_timed_targets_count_passes_and_name_the_rest(tmp_path):
    scheduler = {
        "commit": "abc",
        "date": "d",
        "targets": [
            {"subnets": 100, "queue_depth": 8, "decision_us": 39.0, "target_us": 20.0, "pass": False},
            {"subnets": 100, "queue_depth": 64, "decision_us": 19.0, "target_us": 20.0, "pass": True},
            {"subnets": 1000, "queue_depth": 8, "decision_us": 45.0, "target_us": 50.0, "pass": False}
            | {"verdict": "within noise"},
        ],
    }
    overhead = {
        "commit": "abc",
        "date": "d",
        "rows": [
            _row("demo", 0, 1, "infer", "FAIL", added=343.0),
            _row("demo", 1, 1, "infer", "within noise", added=120.0),
            _row("demo", 2, 1, "infer", "pass", added=80.0),
            _row("demo", 0, 8, "8 × submit", "pass", ratio=1.1),
            _row(EVICTED, 0, 1, "infer", "FAIL", added=435.0),  # a diagnostic: no target
        ],
    }
    (tmp_path / "scheduler.json").write_text(json.dumps(scheduler))
    (tmp_path / "overhead.json").write_text(json.dumps(overhead))
    result = targets.run(argparse.Namespace(out=tmp_path, command="test targets"))
    by_scope = {(r["target"], r["scope"]): r for r in result["rows"]}
    assert by_scope["decision ≤ 20 µs", "100 subnets"] == {
        "target": "decision ≤ 20 µs",
        "scope": "100 subnets",
        "met": 1,
        "of": 2,
        "missed": ["depth 8 (39.0 µs)"],
    }
    assert by_scope["decision ≤ 50 µs", "1000 subnets"]["missed"] == ["depth 8 (45.0 µs, within noise)"]
    batch1 = by_scope["≤ 100 µs added at batch 1", "demo, infer"]
    assert (batch1["met"], batch1["of"]) == (1, 3)
    assert batch1["missed"] == ["subnet 0 (343 µs)", "subnet 1 (120 µs, within noise)"]
    assert by_scope["≤ 1.15× a direct forward at batch 8", "demo, 8 × submit"]["met"] == 1
    assert not any(EVICTED in r["scope"] for r in result["rows"])
    md = (tmp_path / "targets.md").read_text()
    assert "not found: load.json, load_sim.json" in md and "scheduler.json (abc, d)" in md
