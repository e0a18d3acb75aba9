"""Helpers shared by the command-line scripts."""
from __future__ import annotations

import argparse
import sys

from .errors import UserError


def str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def int_list(text: str) -> list[int]:
    return [int(t) for t in text.replace(",", " ").split()]


def new_parser(description: str) -> argparse.ArgumentParser:
    """A parser whose flags have no defaults, so only typed flags override presets and config files."""
    return argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS)


def main_guard(fn):
    """Runs ``fn()``; a UserError becomes one line on stderr and exit status 2, Ctrl-C exits 130."""
    try:
        fn()
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # always one line
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume from the last saved epoch", file=sys.stderr)
        sys.exit(130)


def value_type(default):
    """How the command line parses a setting whose default is ``default``: true/false for booleans, int, float,
    else the text as it is (a list stays a comma string; core.validate turns it into a list)."""
    return (str2bool if isinstance(default, bool) else int if isinstance(default, int)
            else float if isinstance(default, float) else str)


def add_settings(parser: argparse.ArgumentParser, settings: dict) -> None:
    """One flag per declared setting (``core.attacks.all_settings()``): ``--<key with dashes>``, parsed by the
    setting's ``kind`` or its default's type (true/false for booleans, a comma list for lists)."""
    for key, (setting, owners) in settings.items():
        default = setting.default
        kind = setting.kind or value_type(default)
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = setting.help + (f" (default {shown})" if default is not None else "")
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, help=help_text)
