"""`elastic export-onnx` on a saved checkpoint: files, manifest, the source's hash, errors."""

import pytest

import elastic
from elastic.checkpoint import read_manifest
from elastic.cli import main
from elastic.export.onnx import read_export_manifest

pytestmark = pytest.mark.slow  # exports two subnets (seconds each)


def test_export_onnx_command_writes_the_chosen_subnets(small_model, tmp_path, capsys):
    elastic.save(small_model, tmp_path / "model")
    out = tmp_path / "onnx"
    assert main(["export-onnx", str(tmp_path / "model"), "--subnets", "1,3", "--out", str(out), "--no-progress"]) == 0
    manifest = read_export_manifest(out)
    assert [e["id"] for e in manifest["subnets"]] == [1, 3]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "subnet-001.onnx", "subnet-003.onnx"]
    assert manifest["source"]["weights_sha256"] == read_manifest(tmp_path / "model")["weights_sha256"]
    printed = capsys.readouterr().out
    assert "2 subnets of a StitchedNet exported" in printed and "subnet-003.onnx" in printed


def test_export_onnx_command_reports_typed_errors(small_model, tmp_path, capsys):
    assert main(["export-onnx", str(tmp_path / "nothing"), "--out", str(tmp_path / "onnx")]) == 2
    assert "error:" in capsys.readouterr().err
    elastic.save(small_model, tmp_path / "model")
    assert main(["export-onnx", str(tmp_path / "model"), "--subnets", "42", "--out", str(tmp_path / "onnx")]) == 2
    assert "no subnet 42" in capsys.readouterr().err
    assert main(["export-onnx", str(tmp_path / "model"), "--subnets", "best", "--out", str(tmp_path / "onnx")]) == 2
    assert "ids like" in capsys.readouterr().err
    assert not (tmp_path / "onnx").exists()


def test_the_package_and_the_command_line_import_no_torch():
    import json
    import subprocess
    import sys

    code = (
        "import elastic.export, elastic.cli\nelastic.cli.build_parser()\nimport json, sys\n"
        "print(json.dumps([m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
