"""The README shows the results files: every rendered block equals the file it names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "render_readme.py"


def test_readme_blocks_match_results_files():
    docs = [
        "README.md",
        "docs/serving.md",
        *(p.relative_to(ROOT).as_posix() for p in (ROOT / "bench").glob("README.md")),
    ]
    out = subprocess.run([sys.executable, str(SCRIPT), "--check", *docs], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_render_replaces_a_stale_block(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import render_readme
    finally:
        sys.path.remove(str(SCRIPT.parent))
    results = tmp_path / "r"
    results.mkdir()
    (results / "x.md").write_text("# x\n\n| a |\n|---|\n| 1 |\n")
    (results / "x.json").write_text('{"command": "elastic bench x", "environment": {"commit": "abc123"}}')
    monkeypatch.setattr(render_readme, "ROOT", tmp_path)
    stale = "intro\n<!-- render: r/x.md -->\n| a |\n|---|\n| 2 |\n<!-- /render -->\nend\n"
    rendered = render_readme.render(stale)
    assert "| 1 |" in rendered and "| 2 |" not in rendered
    assert "`elastic bench x`, commit abc123" in rendered
    assert render_readme.render(rendered) == rendered
