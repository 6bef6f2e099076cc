#!/usr/bin/env python3
"""Render the README's result blocks from the results files, or check that they match.

A block in README.md (or any markdown file given) names the markdown file it shows:

    <!-- render: bench/results/load.md -->
    ...replaced by that file's body (its first "# title" line dropped) and a provenance line
    read from the JSON beside it (command, commit, date)...
    <!-- /render -->

`python scripts/render_readme.py` rewrites the blocks in place; `--check` exits 1 when any
block differs from its file (a test runs it), so a number in a rendered block is always the
number in the results file. Pure Python, no third-party imports.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- render: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /render -->)", re.S)


def provenance(md: Path) -> str:
    """One line naming the command, commit and date the results file records (if it does)."""
    meta = md.with_suffix(".json")
    if not meta.is_file():
        return ""
    data = json.loads(meta.read_text())
    env, run = data.get("environment", {}), data.get("run", {})
    command = data.get("command") or env.get("command") or run.get("command")
    commit = data.get("commit") or env.get("commit") or run.get("commit")
    date = data.get("date") or env.get("date") or run.get("date")
    parts = [f"`{command}`" if command else None, f"commit {commit}" if commit else None, date]
    parts = [p for p in parts if p]
    return f"\n<sub>From {', '.join(parts)} ({md.relative_to(ROOT).as_posix()}).</sub>\n" if parts else ""


def fragment(path: str) -> str:
    md = ROOT / path
    if not md.is_file():
        raise SystemExit(f"error: README block names {path}, which does not exist")
    lines = md.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    body = "\n".join(lines).strip("\n")
    line = provenance(md)
    commit = re.search(r"commit (\S+?)[,)\s]", line)
    if commit and commit.group(1) in body:  # the file already names its run
        line = ""
    return f"{body}\n{line}"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: f"{m.group(1)}{fragment(m.group('path'))}{m.group(4)}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=["README.md"], help="markdown files (default: README.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if any block differs from its results file")
    args = parser.parse_args(argv)
    stale = []
    for name in args.files:
        path = ROOT / name
        text = path.read_text()
        new = render(text)
        if new != text:
            if args.check:
                stale.append(name)
            else:
                path.write_text(new)
                print(f"rendered {name}")
    if stale:
        print(f"out of date with the results files: {', '.join(stale)}; run scripts/render_readme.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
