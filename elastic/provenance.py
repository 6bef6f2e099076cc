"""What made a result: the command, the commit (and which tracked source files differed from
it), the UTC date. Pure Python, no torch: the CLI, the demo and the serving stage record it
in their reports.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def run_record(command: str | None) -> dict[str, Any]:
    """What made a result: the command, the commit (and which tracked source files differed
    from it), the UTC date."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True)
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("diff", "--name-only", "HEAD", "--", "elastic", "anchors", "kernels", "serving")
    return {
        "command": command or "elastic.demo.pipeline.run_demo (Python API)",
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "uncommitted_source_changes": changed.splitlines() if changed else [],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
