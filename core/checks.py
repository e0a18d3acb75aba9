"""Value checks of settings: each :class:`Check` says what is allowed (as it reads after "must be") and turns
a value into its normalised form or raises :class:`Bad`. Settings declare them (core.settings.Setting); this
module imports nothing of the toolkit, so every method file can use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable


class Bad(Exception):
    """Raised by a check: the value is not allowed."""


@dataclass(frozen=True)
class Check:
    """``describe``: what is allowed, as it reads after "must be"; ``convert``: value -> normalised value or Bad."""

    describe: str
    convert: Callable[[Any], Any]
    optional: bool = False  # None (unset) is allowed
    parse: Callable[[str], Any] = str  # how the command line reads the value's text (convert checks it after)
    is_file: bool = False  # the value names an input file: a run's settings hold its content hash, not its path

    def or_unset(self) -> "Check":
        """The same check with None (unset: the method's own default) allowed."""
        return replace(self, optional=True)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_number(text: str):
    """An int where the text is one (so that integer checks see ints), else a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_list(text: str) -> list:
    return [parse_number(t) for t in text.replace(",", " ").split()]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _range_text(lo, hi, lo_open, hi_open) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def integer(lo=None, hi=None, optional=False) -> Check:
    def convert(v):
        if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise Bad
        return v
    return Check(f"an integer {_range_text(lo, hi, False, False)}", convert, optional, parse_number)


def number(lo=None, hi=None, lo_open=False, hi_open=False, optional=False) -> Check:
    """A finite real number; integers and numeric strings (YAML reads ``1e-3`` as a string) are accepted."""
    def convert(v):
        if isinstance(v, bool):
            raise Bad
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise Bad from None
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise Bad
        v = float(v)
        if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and (v >= hi if hi_open else v > hi):
            raise Bad
        return v
    what = "a finite number" if lo is None and hi is None else f"a number {_range_text(lo, hi, lo_open, hi_open)}"
    return Check(what, convert, optional, parse_number)


MAX_LEARNING_RATE = 1e6


def learning_rate() -> Check:
    """A learning rate: > 0 and at most 1e6 (larger ones are typos, and overflow float32 before the loss can
    show a divergence)."""
    return replace(number(0, MAX_LEARNING_RATE, lo_open=True), describe="a number > 0 (at most 1e6)")


def choice(options, optional=False, casefold=False, hint: Callable[[Any], str] = lambda v: "") -> Check:
    options = list(options)

    def convert(v):
        for o in options:
            if v == o or casefold and isinstance(v, str) and v.lower() == o.lower():
                return o
        raise Bad(hint(v))
    numeric = all(_is_int(o) for o in options)
    return Check(f"one of {', '.join(map(str, options))}", convert, optional, parse_number if numeric else str)


def boolean() -> Check:
    def convert(v):
        if not isinstance(v, bool):
            raise Bad
        return v
    return Check("true or false", convert, parse=parse_bool)


def text(optional=False) -> Check:
    def convert(v):
        if not isinstance(v, str) or not v:
            raise Bad
        return v
    return Check("a non-empty string", convert, optional)


def name(optional=False) -> Check:
    """A single folder name (it becomes part of an output path)."""
    def convert(v):
        if not isinstance(v, str) or not v or v in (".", "..") or "/" in v or "\\" in v:
            raise Bad
        return v
    return Check("a plain name (no '/', not '.' or '..')", convert, optional)


def _existing_path(what: str, exists, optional: bool, is_file: bool = False) -> Check:
    """A path for which ``exists(Path)`` holds, stored absolute so that the run folder can be read from anywhere."""
    def convert(v):
        if not isinstance(v, str) or not exists(Path(v).expanduser()):
            raise Bad
        return str(Path(v).expanduser().resolve())
    return Check(f"an existing {what}", convert, optional, is_file=is_file)


def existing_file(optional=True) -> Check:
    return _existing_path("file", Path.is_file, optional, is_file=True)


def existing_folder(optional=True) -> Check:
    return _existing_path("folder", Path.is_dir, optional)


def number_list(lo=None, hi=None, length: int | None = None) -> Check:
    """A list of finite numbers in [lo, hi] (``length`` of them if given); "0.5,0.2" strings are accepted."""
    one = number(lo, hi)

    def convert(v):
        if isinstance(v, str):
            v = [t for t in v.replace(",", " ").split()]
        if not isinstance(v, (list, tuple)) or length is not None and len(v) != length:
            raise Bad
        return [one.convert(x) for x in v]
    count = f"{length} " if length else ""
    return Check(f"a list of {count}numbers {_range_text(lo, hi, False, False)}", convert, parse=parse_list)


def int_list(lo=0) -> Check:
    def convert(v):
        if not isinstance(v, (list, tuple)) or not all(_is_int(x) and x >= lo for x in v):
            raise Bad
        return [int(x) for x in v]
    return Check(f"a list of integers >= {lo}", convert, parse=parse_list)
