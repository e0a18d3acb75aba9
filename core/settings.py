"""Settings, each declared once: type (through its check), default, help, section and command-line spellings.

    EPOCHS = Setting(150, "training epochs", integer(1), section="train")

From the declarations come everything else: the flags of attack.py, refine.py and defend.py
(:func:`add_flags`), the built-in defaults (:func:`defaults`), the checks of a resolved configuration
(:func:`validate`), the run's settings hash (the ``run`` section is left out: where and how fast a run goes
never changes what it computes), the nested ``config.yaml`` of a run (:func:`nest`) and docs/flags.md.

Sections: ``run`` (devices, folders, logging, speed switches), ``data`` (which data and how much),
``train`` (a training recipe) and ``method`` (the attack's or defense's own settings).
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, Mapping

from .checks import Bad, Check, boolean, integer, name, number, parse_bool, text
from .errors import UserError

SECTIONS = ("run", "data", "train", "method")


@dataclass(frozen=True)
class Setting:
    """One option. ``check``: what values are allowed (core.checks; None: anything); ``section``: see the
    module docstring; ``aliases``: other command-line spellings (the official scripts' flags, e.g. ``--tlabel``);
    ``cli``: False for an option only a preset or --config file sets."""

    default: Any
    help: str
    check: Check | None = None
    section: str = "method"
    aliases: tuple[str, ...] = ()
    cli: bool = True
    store_const: Any = None  # not None: the flag takes no value and sets this one (--fresh: True)
    switches: tuple[tuple[str, Any], ...] = ()  # more flags that take no value and set a constant (--no-remap)
    listed: bool = True  # False: internal (set by the scripts themselves), left out of docs and listings

    def flag(self, key: str) -> str:
        return _flag(key)


Settings = Mapping[str, Setting]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def flag_of(key: str, setting: Setting | None = None) -> str:
    """How a message names the option ``key``: its flag, or its config key when it has no flag."""
    if setting is not None and not setting.cli:
        return f"{key} (an option of the preset or --config file)"
    return _flag(key)


def defaults(settings: Settings) -> dict:
    return {key: s.default for key, s in settings.items()}


def with_defaults(settings: Settings, given: dict, owner: str) -> dict:
    """``given`` keyword values over the declared defaults of ``settings``, for a Python caller; a key that is
    not declared is a TypeError naming ``owner`` (a typo must not pass as a default)."""
    unknown = set(given) - set(settings)
    if unknown:
        raise TypeError(f"{owner} has no setting(s) {', '.join(sorted(unknown))}")
    return {**defaults(settings), **given}


def _parser_of(check: Check | None):
    parse = check.parse if check is not None else str

    def read(text: str):
        try:
            return parse(text)
        except (TypeError, ValueError):
            return text  # the check names the flag and what it allows
    return read


def shown(default) -> str:
    return ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)


def add_flags(parser: argparse.ArgumentParser, settings: Settings, owners: Mapping[str, list[str]] | None = None,
              help_of: Mapping[str, str] | None = None) -> None:
    """One flag per setting (``--<key with dashes>`` and its aliases). Parsed values are only read, never
    checked here: :func:`validate` checks the merged configuration, whichever layer set a value.
    ``owners``: key -> the methods that have it, added to the help; ``help_of``: key -> a help to use instead."""
    for key, s in settings.items():
        if not s.cli:
            continue
        if help_of and key in help_of:
            s = replace(s, help=help_of[key])
        flags = [s.flag(key), *s.aliases]
        extra = f" [{', '.join(owners[key])}]" if owners and key in owners else ""
        default = f" (default {shown(s.default)})" if s.default is not None else ""
        # argparse formats help with %: escape the help and the default (e.g. submitit's "%j" folder)
        s = replace(s, help=s.help.replace("%", "%%"))
        default = default.replace("%", "%%")
        if s.store_const is not None:
            parser.add_argument(*flags, dest=key, action="store_const", const=s.store_const, help=s.help + extra)
        elif s.check is not None and s.check.parse is parse_bool:  # --flag alone means true
            parser.add_argument(*flags, dest=key, type=_parser_of(s.check), nargs="?", const=True,
                                help=s.help + default + extra)
        else:
            parser.add_argument(*flags, dest=key, type=_parser_of(s.check), help=s.help + default + extra)
        for switch, const in s.switches:
            parser.add_argument(switch, dest=key, action="store_const", const=const,
                                help=f"sets {s.flag(key)} to {const}")


def check_value(key: str, setting: Setting, value):
    """``value`` checked and normalised by ``setting.check``; a one-line UserError naming the flag otherwise."""
    check = setting.check
    if check is None or value is None and check.optional:
        return value
    try:
        return check.convert(value)
    except Bad as bad:
        raise UserError(f"{flag_of(key, setting)} must be {check.describe}, got {value!r}{bad}") from None


def validate(config: dict, settings: Settings) -> dict:
    """The config with every declared value checked and normalised (floats as floats, paths absolute); keys
    without a declaration pass through unchanged."""
    config = dict(config)
    for key, s in settings.items():
        if key in config:
            config[key] = check_value(key, s, config[key])
    return config


def hashed(settings: Settings) -> frozenset:
    """Keys whose values define what a run computes: every section but ``run``."""
    return frozenset(k for k, s in settings.items() if s.section != "run")


def file_keys(settings: Settings) -> frozenset:
    """Keys that name an input file (a run's settings hold the file's content hash)."""
    return frozenset(k for k, s in settings.items() if s.check is not None and s.check.is_file)


def nest(config: dict, settings: Settings) -> dict:
    """The flat ``config`` as ``{section: {key: value}}`` (undeclared keys under ``run``), as config.yaml holds it."""
    nested = {section: {} for section in SECTIONS}
    for key, value in config.items():
        nested[settings[key].section if key in settings else "run"][key] = value
    return {section: values for section, values in nested.items() if values}


def flatten(config: dict) -> dict:
    """A config.yaml read back: nested by section (this version) or flat (earlier runs) -> flat."""
    if config and set(config) <= set(SECTIONS) and all(isinstance(v, dict) for v in config.values()):
        return {k: v for section in SECTIONS for k, v in (config.get(section) or {}).items()}
    return dict(config)


def merge(*groups: Settings) -> dict[str, Setting]:
    """Several groups of settings as one; a key declared twice must be declared the same way."""
    merged: dict[str, Setting] = {}
    for group in groups:
        for key, s in group.items():
            if key in merged and merged[key] != s:
                raise ValueError(f"setting {key!r} is declared twice, differently")
            merged[key] = s
    return merged


def describe(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(flags, default, allowed, help) of each setting that has a flag: the rows of docs/flags.md and --list."""
    rows = []
    for key, s in settings.items():
        if not s.listed:
            continue
        flags = (", ".join(f"`{f}`" for f in [s.flag(key), *s.aliases, *(w for w, _ in s.switches)]) if s.cli
                 else f"`{key}` (config only)")
        allowed = s.check.describe if s.check is not None else "any"
        rows.append((flags, "" if s.default is None else shown(s.default), allowed, s.help))
    return rows


# -- what every job has -----------------------------------------------------------------------------------------
# How and where a run goes: never part of what it computes (left out of the settings hash; a run resumes with
# them changed).
RUN = {
    "device": Setting("auto", "auto, cpu, cuda, cuda:1 or a GPU index", text(), "run",
                      aliases=("--gpu_id", "--gpu")),
    "seed": Setting(0, "random seed (trigger, subsets, initial weights, batch order)", integer(0, 2**31 - 1), "train"),
    "amp": Setting(True, "bf16 mixed precision on CUDA (no effect on a CPU)", boolean(), "train"),
    "compile": Setting(False, "torch.compile where the method supports it (eager again if compilation fails): "
                              "speed only", boolean(), "run"),
    "fused": Setting(False, "fused optimizer kernels on CUDA: speed only", boolean(), "run"),
    "eval_every": Setting(10, "evaluate BA/ASR every N epochs (and after the last)", integer(1), "run"),
    "eval_batch_size": Setting(None, "evaluation batch size (default: by device)", integer(1, optional=True), "run",
                               cli=False),
    "fresh": Setting(False, "discard an unfinished run (a finished run is never discarded)", boolean(), "run",
                     store_const=True),
    "preset": Setting(None, "YAML preset (configs/<task>/<name>.yaml)", name(optional=True), "run", cli=False,
                      listed=False),  # --preset: a layer of core.config, not a value
    "recipe_note": Setting(None, "why the preset's embedded_sample section was (not) used", None, "run", cli=False,
                           listed=False),
    "data_root": Setting("data", "data folder or .tar.gz", text(), "run"),
    "allow_embedded": Setting(False, "fall back to the embedded 25,000-image CIFAR-10 sample when no full data set "
                                     "is found", boolean(), "run"),
    "download": Setting(False, "download CIFAR-10 (torchvision, md5-checked) into --data-root if it is not there",
                        boolean(), "run", store_const=True),
}


def from_dataclass(cls, section: str = "method", exclude=(), label: str = "") -> dict[str, Setting]:
    """Settings declared as the fields of a config dataclass (its defaults; ``help``/``check``/``section`` from
    each field's metadata, else a help made of the name and a check from the default's type: integers >= 0,
    numbers >= 0, true/false). ``label`` prefixes the help (e.g. "BTI-DBF: ")."""
    out = {}
    for f in fields(cls):
        if f.name in exclude:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        check = f.metadata.get("check")
        if check is None:
            check = (boolean() if isinstance(default, bool) else integer(0) if isinstance(default, int)
                     else number(0) if isinstance(default, float) else None)
        help_text = label + f.metadata.get("help", f.name.replace("_", " "))
        out[f.name] = Setting(default, help_text, check, f.metadata.get("section", section))
    return out


def owners_of(classes, attr: str = "settings") -> dict[str, list[str]]:
    """key -> names of the classes (attacks or defenses) that declare it."""
    found: dict[str, list[str]] = {}
    for cls in classes:
        for key in getattr(cls, attr):
            found.setdefault(key, []).append(cls.name)
    return found

