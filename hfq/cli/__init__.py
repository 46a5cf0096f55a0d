"""The `hfq` command line. One module per command group:
quantize (quantize, importance), info (info, doctor), evaluate (eval), export (export-gguf, export),
publish (push, demo), space (space)."""

from __future__ import annotations

import argparse
import logging
import sys

from . import evaluate, export, info, publish, quantize, space

GROUPS = (quantize, info, evaluate, publish, export, space)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"hfq: error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hfq", description="Quantize Hugging Face causal LMs with hfq.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for group in GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.handler(args)
    except (ValueError, OSError, RuntimeError) as e:
        if args.verbose:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"hfq: error: {first}", file=sys.stderr)
        return 1
