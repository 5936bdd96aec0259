"""The ``cxrfm`` command line. Each subcommand is a thin layer over the public API.

Layout: one module per command group (``data``, ``train``, ``evaluate``, ``serve``, ``concepts``, ``anatomy``,
``compress``), each with one ``_add_<name>`` (argparse) and one ``_run_<name>`` (calls the library) per subcommand.
User errors (:class:`cxrfm.errors.CxrfmError`) print one line and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from .. import __version__  # noqa: E402
from ..errors import CxrfmError  # noqa: E402

EPILOG = """examples:
  cxrfm ingest ../shared/data/cxr/manifest.csv --format manifest --out data/
  cxrfm label data/manifest.csv --out data/labels.csv
  cxrfm split data/manifest.csv --out data/ --seed 0
  cxrfm prepare data/manifest.csv --size 128
  cxrfm demo --out runs/demo
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrfm", description="Build, curate, evaluate and serve chest X-ray vision-language models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cxrfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import anatomy, compress, concepts, data, evaluate, serve, train

    for add in (*data.COMMANDS, *train.COMMANDS, *evaluate.COMMANDS, *serve.COMMANDS, concepts.add_concepts_command,
                *anatomy.COMMANDS, *compress.COMMANDS):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CxrfmError as e:
        print(f"cxrfm {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cxrfm {args.command}: interrupted", file=sys.stderr)
        return 130


