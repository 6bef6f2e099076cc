"""What made a result: the command, the commit (and which tracked source files differed from
it), the UTC date. Pure Python, no torch: the CLI, the demos, the benchmarks and the serving
stage record it in their reports; `commit` is the one place that asks git.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# the code that runs, not the results, docs or README a run may rewrite
SOURCE_DIRS = ("elastic", "anchors", "kernels", "serving", "bench/*.py", "pyproject.toml")
_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, root: Path = _ROOT) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit(root: str | Path | None = None) -> str | None:
    """`git rev-parse --short HEAD` of the checkout, plus "-dirty" when tracked source files
    (`SOURCE_DIRS`) differ from it; None outside a git checkout (an installed package)."""
    where = Path(root) if root is not None else _ROOT
    head = _git("rev-parse", "--short", "HEAD", root=where)
    if not head:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *SOURCE_DIRS, root=where)
    return head + ("-dirty" if dirty else "")


def run_record(command: str | None) -> dict[str, Any]:
    """What made a result: the command, the commit (and which tracked source files differed
    from it), the UTC date."""
    changed = _git("diff", "--name-only", "HEAD", "--", "elastic", "anchors", "kernels", "serving")
    return {
        "command": command or "elastic.demo.pipeline.run_demo (Python API)",
        "commit": _git("rev-parse", "--short", "HEAD") or None,
        "uncommitted_source_changes": changed.splitlines() if changed else [],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
