"""The `elastic` command line. Library code logs; this module prints.

Each subcommand lives in its own module with `register(subparsers)`, which adds its parser
and sets `func`; this file only assembles them.

Exit codes: 0 done; 2 a user error, printed as one `error: ...` line (every
`elastic.errors.ElasticError`: a bad checkpoint, a bad setting, an unwritable output
folder) or argparse's usage message; 130 interrupted. Any other exception is a bug and
shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
from pathlib import Path

COMMANDS = [
    "elastic.commands.demo",
    "elastic.commands.info",
    "elastic.commands.bench",
    "elastic.commands.serve_demo",
    "elastic.commands.export_onnx",
    "elastic.commands.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elastic", description="Elastic inference runtime: many subnets in one set of weights."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def require_writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Create `path` if needed and check a file can be written in it, before any long work.

    Raises:
        ConfigError: `path` is not a directory or cannot be written.
    """
    from elastic.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"{option} {path} is not writable: {e.strerror or e}") from e
    return path


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed usage and the error (or --help)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from elastic.errors import ElasticError

    try:
        return int(args.func(args) or 0)
    except ElasticError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
