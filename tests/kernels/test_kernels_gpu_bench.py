"""bench/kernels_gpu.py in its CPU smoke mode (Triton interpreter, tiny sizes)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "kernels_gpu.py"


@pytest.mark.slow
def test_interpret_smoke_writes_json(tmp_path):
    out = tmp_path / "kernels.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("ELASTIC_KERNELS", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--interpret-smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["mode"] == "interpret-smoke" and result["all_correct"]
    assert {c["variant"] for c in result["correctness"]} == {"linear", "lora", "layernorm"}
    assert len(result["timings"]) == 12 and not result["skipped"]
    assert {"ms", "torch_ms", "tflop_s", "gb_s", "frac_of_copy_bw"} <= set(result["timings"][0])
    assert result["peaks"]["copy_gb_s"] > 0
    assert [h["variant"] for h in result["host_path"]] == ["linear", "lora", "layernorm"]
    for h in result["host_path"]:
        assert all(h[f"{layer}_host_us"] > 0 for layer in ("public", "custom_op", "launcher", "torch"))
    assert result["command"].startswith("kernels_gpu.py --interpret-smoke") and result["date"]


def load_script():
    spec = importlib.util.spec_from_file_location("kernels_gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: no quick refusal")
def test_refuses_without_gpu_or_smoke(tmp_path, capsys):
    assert load_script().main(["--out", str(tmp_path / "x.json")]) == 2
    assert "--interpret-smoke" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_cost_model():
    bench = load_script()
    flops, nbytes = bench.case_cost(10, 4, 8, "layernorm", 2, 16)
    assert flops == 2 * 10 * 4 * 8
    assert nbytes == 2 * (10 * 4 + 8 * 4 + 8 + 2 * 10 * 8 + 2 * 8)
