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
