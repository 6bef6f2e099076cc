"""The core stays light: the package, the scheduler side and `elastic info` import no torch.

Checked in a fresh interpreter (`sys.modules` after the import), not by reading import
lines: a package `__init__` or a transitive import would slip past a text search.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "timm", "triton")

PURE_PYTHON = [
    "elastic",
    "elastic.errors",
    "elastic.subnet",
    "elastic.serving",
    "elastic.serving.scheduler",
    "elastic.serving.policies",
    "elastic.serving.demand",
    "elastic.serving.profile",
    "elastic.serving.predictor",
    "elastic.builders.published",
    "elastic.export",
    "elastic.manifest",
    "elastic.tables",
    "elastic.provenance",
]


def imported_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", PURE_PYTHON)
def test_module_imports_no_torch(module):
    assert imported_after(f"import {module}") == []


def test_package_attributes_stay_lazy_until_used():
    assert imported_after("import elastic; elastic.Subnet; elastic.pareto; elastic.errors.InvalidInput") == []
    assert "torch" in imported_after("import elastic; elastic.StitchedNet")


def test_elastic_info_imports_no_torch(tiny_stitched, tmp_path):
    import elastic

    elastic.save(tiny_stitched, tmp_path / "model")
    code = f"from elastic.cli import main\nassert main(['info', {str(tmp_path / 'model')!r}]) == 0"
    assert imported_after(code) == []
