"""The `hfq` command line. One module per command group:
quantize (quantize, importance), info (info, doctor), evaluate (eval), export (export-gguf, export),
publish (push, demo), generate (generate, chat), verify (verify), space (space)."""

from __future__ import annotations

import argparse
import logging
import sys

from . import evaluate, export, generate, info, publish, quantize, space, verify

GROUPS = (quantize, info, evaluate, publish, export, generate, verify, space)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"hfq: error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hfq", description="Quantize Hugging Face causal LMs with hfq.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for group in GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _build_parser().parse_args(argv)
    args.argv = argv   # what was run, for the "resume with" hints
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("hfq: error: interrupted; nothing was published (outputs are written atomically)", file=sys.stderr)
        return 130
    except Exception as e:   # one line, never a traceback (--debug shows it)
        if args.debug or args.verbose:
            raise
        print(f"hfq: error: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    mod = type(e).__module__
    if isinstance(e, (ValueError, OSError, RuntimeError)) and (mod == "builtins" or mod.split(".")[0] == "hfq"):
        return text or type(e).__name__
    # a foreign exception (safetensors, torch, transformers...): name it so the report is useful
    return f"{type(e).__name__}: {text or 'no message'} (rerun with --debug for the traceback)"
