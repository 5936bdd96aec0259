"""Every command's --help renders (argparse formats help text lazily, so a stray '%' only breaks there)."""
from __future__ import annotations

import argparse

import pytest

from cxrfm.cli import build_parser


def _commands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


COMMANDS = sorted(set(_commands(build_parser())))


def test_every_documented_command_is_found():
    names = {c[0] for c in COMMANDS}
    assert {"eval", "pretrain", "segment", "anatomy", "serve"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_renders(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and len(out) > 100
