"""bench/gpu_check.sh on the CPU: its dry run sets up imports and plans every step."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


@pytest.mark.slow
def test_dry_run_plans_every_step_through_the_copy_route(tmp_path):
    """The copy route (no install) makes elastic.kernels importable from the copy, with -P."""
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_FORCE_SHIM": "1", "ELASTIC_MODEL": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "out"
    rows = csv.DictReader((out / "steps.tsv").read_text().splitlines(), delimiter="\t")
    steps = {row["step"]: row for row in rows}
    assert list(steps) == ["env", "imports", "gpu-tests", "kernels", "graphs", *(f"bench-{s}" for s in SUITES)]
    assert steps["imports"]["status"] == "ok" and "route copy:" in steps["imports"]["note"]
    copy = steps["imports"]["note"].split("route copy:")[1].split(";")[0]
    assert steps["imports"]["note"].endswith(f"{copy}/elastic/kernels/__init__.py")
    gpu_tests = steps["gpu-tests"]["note"]
    assert steps["gpu-tests"]["status"] == "dry-run" and "TRITON_INTERPRET=0" in gpu_tests and "-m gpu" in gpu_tests
    assert "tests/serving/test_cuda_graph_executor.py" in gpu_tests and "-P" in gpu_tests
    assert "bench/kernels_gpu.py" in steps["kernels"]["note"]
    assert "bench/cuda_graphs_gpu.py" in steps["graphs"]["note"]
    for suite in SUITES:  # no saved model in ELASTIC_MODEL (and maybe no --device): skipped, with the reason
        assert steps[f"bench-{suite}"]["status"] == "skipped" and steps[f"bench-{suite}"]["note"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["env"]["python"] and summary["env"]["commit"]


SUITES = ("overhead", "parity", "switching", "load")
