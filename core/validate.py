"""Up-front checks of a resolved configuration (built-in defaults < preset < --config < flags).

One declarative table per script maps each option to the flag that sets it and the values it allows.
:func:`validate` applies it before anything is read or written, so a bad value - typed on the command
line or carried by a YAML file - stops the run with one line naming the flag and the allowed range,
instead of a traceback half-way through or a run that trains on nonsense.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import UserError


class _Bad(Exception):
    """Raised by a check: the value is not allowed."""


@dataclass(frozen=True)
class Check:
    """``describe``: what is allowed, as it reads after "must be"; ``convert``: value -> normalised value or _Bad."""

    describe: str
    convert: Callable[[Any], Any]
    optional: bool = False  # None (unset) is allowed


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
            raise _Bad
        return v
    return Check(f"an integer {_range_text(lo, hi, False, False)}", convert, optional)


def number(lo=None, hi=None, lo_open=False, hi_open=False, optional=False) -> Check:
    """A finite real number; integers and numeric strings (YAML reads ``1e-3`` as a string) are accepted."""
    def convert(v):
        if isinstance(v, bool):
            raise _Bad
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise _Bad from None
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Bad
        v = float(v)
        if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and (v >= hi if hi_open else v > hi):
            raise _Bad
        return v
    what = "a finite number" if lo is None and hi is None else f"a number {_range_text(lo, hi, lo_open, hi_open)}"
    return Check(what, convert, optional)


def choice(options, optional=False, casefold=False, hint: Callable[[Any], str] = lambda v: "") -> Check:
    options = list(options)

    def convert(v):
        for o in options:
            if v == o or casefold and isinstance(v, str) and v.lower() == o.lower():
                return o
        raise _Bad(hint(v))
    return Check(f"one of {', '.join(map(str, options))}", convert, optional)


def boolean() -> Check:
    def convert(v):
        if not isinstance(v, bool):
            raise _Bad
        return v
    return Check("true or false", convert)


def text(optional=False) -> Check:
    def convert(v):
        if not isinstance(v, str) or not v:
            raise _Bad
        return v
    return Check("a non-empty string", convert, optional)


def name(optional=False) -> Check:
    """A single folder name (it becomes part of an output path)."""
    def convert(v):
        if not isinstance(v, str) or not v or v in (".", "..") or "/" in v or "\\" in v:
            raise _Bad
        return v
    return Check("a plain name (no '/', not '.' or '..')", convert, optional)


def _existing_path(what: str, exists, optional: bool) -> Check:
    """A path for which ``exists(Path)`` holds, stored absolute so that the run folder can be read from anywhere."""
    def convert(v):
        if not isinstance(v, str) or not exists(Path(v).expanduser()):
            raise _Bad
        return str(Path(v).expanduser().resolve())
    return Check(f"an existing {what}", convert, optional)


def existing_file(optional=True) -> Check:
    return _existing_path("file", Path.is_file, optional)


def existing_folder(optional=True) -> Check:
    return _existing_path("folder", Path.is_dir, optional)


def number_list(lo=None, hi=None, length: int | None = None) -> Check:
    """A list of finite numbers in [lo, hi] (``length`` of them if given); "0.5,0.2" strings are accepted."""
    one = number(lo, hi)

    def convert(v):
        if isinstance(v, str):
            v = [t for t in v.replace(",", " ").split()]
        if not isinstance(v, (list, tuple)) or length is not None and len(v) != length:
            raise _Bad
        return [one.convert(x) for x in v]
    count = f"{length} " if length else ""
    return Check(f"a list of {count}numbers {_range_text(lo, hi, False, False)}", convert)


def int_list(lo=0) -> Check:
    def convert(v):
        if not isinstance(v, (list, tuple)) or not all(_is_int(x) and x >= lo for x in v):
            raise _Bad
        return [int(x) for x in v]
    return Check(f"a list of integers >= {lo}", convert)


# -- the tables ---------------------------------------------------------------------------------------
# ``classes`` is the class count of the configured data set (checked first): target labels and subset
# sizes depend on it.

def _common(classes: int) -> dict[str, Check]:
    from .augment import AUGMENTATIONS
    from .data import DATASETS
    from .models import MODEL_NAMES

    return {
        "dataset": choice(DATASETS), "model": choice(MODEL_NAMES),
        "epochs": integer(1), "batch_size": integer(1), "lr": number(0, lo_open=True),
        "optimizer": choice(("SGD", "Adam"), casefold=True), "momentum": number(0, 1, hi_open=True),
        "weight_decay": number(0), "schedule": choice(("multistep", "cosine", "onecycle", "constant")),
        "milestones": int_list(0), "augment": choice(AUGMENTATIONS),
        "test_size": integer(classes, optional=True),
        "data_root": text(), "allow_embedded": boolean(), "out": text(), "device": text(), "amp": boolean(),
        "seed": integer(0), "eval_every": integer(1), "eval_batch_size": integer(1, optional=True),
        "fresh": boolean(), "preset": name(optional=True), "compile": boolean(), "fused": boolean(),
    }


def attack_rules(classes: int) -> dict[str, Check]:
    from .attacks import ALIASES, ATTACKS, all_settings
    from .models import NORMALIZATIONS

    return {
        **_common(classes),
        "attack": choice([*ATTACKS, *ALIASES]), "width": integer(1), "normalization": choice(NORMALIZATIONS),
        "y_target": integer(0, classes - 1), "poisoned_rate": number(0, 1, optional=True),
        "trigger": existing_file(), "gamma": number(0, lo_open=True), "label_smoothing": number(0, 1),
        "train_size": integer(classes, optional=True),
        # each attack's own settings; None (unset) means the attack's default
        **{key: _optional(setting.check) for key, (setting, _) in all_settings().items() if setting.check},
    }


def _optional(check: Check) -> Check:
    return Check(check.describe, check.convert, optional=True)


def defense_rules(classes: int) -> dict[str, Check]:
    """The options every defense run has; each defense adds its own (``Defense.checks``)."""
    from .defenses import DEFENSE_ALIASES, DEFENSES
    from .models import NORMALIZATIONS

    return {
        **_common(classes),
        "defense": choice([*DEFENSES, *DEFENSE_ALIASES]),
        "attack": name(optional=True), "model_path": existing_file(), "attack_dir": text(),
        "tlabel": integer(0, classes - 1, optional=True), "trigger": existing_file(),
        "normalization": choice(NORMALIZATIONS, optional=True), "out": text(optional=True),
        "data_fraction": number(0, 1, lo_open=True), "run_name": name(optional=True),
    }


RULES = {"attack": attack_rules, "defense": defense_rules}
# The flag to name when it is not simply --<key with dashes>; options without a flag are named as such.
FLAGS = {"y_target": "--tlabel"}
CONFIG_ONLY = {"momentum", "eval_batch_size"}


def flag(key: str) -> str:
    if key in CONFIG_ONLY:
        return f"{key} (an option of the preset or --config file)"
    return FLAGS.get(key, "--" + key.replace("_", "-"))


def _apply(key: str, check: Check, value):
    if value is None and check.optional:
        return None
    try:
        return check.convert(value)
    except _Bad as bad:
        hint = str(bad)
        raise UserError(f"{flag(key)} must be {check.describe}, got {value!r}{hint}") from None


def validate(task: str, config: dict, extra_rules: dict[str, Check] | None = None) -> dict:
    """The config with every value checked and normalised (floats as floats, paths absolute).

    ``extra_rules``: checks of options the task's table does not know (a defense's own settings). Raises a one-line UserError naming the flag and the allowed values at the first bad option.
    Options without a rule (added elsewhere) pass through unchanged.
    """
    from .data import DATASETS

    config = dict(config)
    config["dataset"] = _apply("dataset", choice(DATASETS), config.get("dataset"))
    classes = DATASETS[config["dataset"]][0]
    for key, check in {**RULES[task](classes), **(extra_rules or {})}.items():
        if key in config:
            config[key] = _apply(key, check, config[key])
    if config.get("model") == "ViT" and config.get("width", 4) % 4:  # embedding 3*width split over 4 heads
        raise UserError(f"--width must be a multiple of 4 for ViT, got {config['width']}")
    if str(config.get("trigger") or "").endswith((".pth", ".pt")):
        _check_trigger_tensor(config["trigger"], DATASETS[config["dataset"]][1])
    return config


def _check_trigger_tensor(path: str, size: int) -> None:
    """A .pth trigger must load (weights only) and hold a size x size pattern (C×H×W, H×W×C or H×W)."""
    import torch

    from .checkpoint import safe_load

    blob = safe_load(path)  # a damaged trigger file is named now, not as a traceback later
    t = blob.get("pattern") if isinstance(blob, dict) else blob
    shapes = {tuple(t.shape[-2:]), tuple(t.shape[:2])} if isinstance(t, torch.Tensor) and t.dim() in (2, 3) else set()
    if (size, size) not in shapes:
        got = f"a tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else "no tensor"
        raise UserError(f"--trigger must hold a {size}x{size} pattern (a tensor, or a dict with 'pattern'), got {got} "
                        f"in {path}")
