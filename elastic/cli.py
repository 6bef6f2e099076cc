"""The `elastic` command line. Library code logs; this module prints.

Each subcommand lives in its own module with `register(subparsers)`, which adds its parser
and sets `func`; this file only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = [
    "elastic.commands.demo",
    "elastic.commands.info",
    "elastic.commands.bench",
    "elastic.commands.serve_demo",
    "elastic.commands.export_onnx",
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from elastic.errors import ElasticError

    try:
        return int(args.func(args) or 0)
    except ElasticError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
