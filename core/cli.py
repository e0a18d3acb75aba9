"""Helpers shared by the command-line scripts: a parser whose flags have no defaults, the preset and config
layers, and one line instead of a traceback for every error the user can fix."""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from pathlib import Path

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """argparse's own refusals (an unknown flag, a missing value) as one line, like the toolkit's checks."""
        raise UserError(f"{message}; `{self.prog} --help` lists the flags")


def new_parser(description: str) -> argparse.ArgumentParser:
    """A parser whose flags have no defaults, so only typed flags override presets and config files. Its
    refusals are UserErrors: one line, exit status 2 (through :func:`main_guard`)."""
    return _Parser(description=description, argument_default=argparse.SUPPRESS)


def add_layers(parser: argparse.ArgumentParser, task: str) -> None:
    """--preset and --config: the two YAML layers between the built-in defaults and the flags."""
    parser.add_argument("--preset", help=f"YAML preset in configs/{task}/ (paper [default], mini, fast; "
                                         f"the built-in defaults are the paper's settings)")
    parser.add_argument("--config", help="YAML file of options, applied after the preset")


def check_writable(path, flag: str) -> None:
    """Refuses up front an output ``path`` whose folder (the nearest one that exists) cannot be written: for outputs
    written only after hours of work, such as compare.py's tables."""
    folder = Path(path).expanduser().absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(f"{flag} {path}: {folder} is not a writable folder; pass a writable {flag}")


@contextlib.contextmanager
def starting():
    """Wraps a script's imports: PyTorch takes seconds to load, and Ctrl-C meanwhile is one line and exit
    status 130, as it is later (this module imports nothing heavy, see core/__init__.py)."""
    try:
        yield
    except KeyboardInterrupt:
        print("\ninterrupted while starting; nothing was written", file=sys.stderr)
        sys.exit(130)


def main_guard(fn):
    """Runs ``fn()``; a UserError - or a folder that cannot be written - becomes one line on stderr and exit status
    2, Ctrl-C exits 130."""
    try:
        fn()
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # always one line
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        print(f"error: cannot write {exc.filename or 'an output file'} ({exc.strerror}); pass a writable --out "
              f"(compare.py: --out-table)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume from the last saved epoch", file=sys.stderr)
        sys.exit(130)
