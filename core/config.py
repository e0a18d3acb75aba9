"""Configuration: built-in defaults (the paper's settings) < preset YAML < --config FILE < command-line flags."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .attacks import canonical_name
from .data import will_use_embedded_sample
from .errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
EMBEDDED_SECTION = "embedded_sample"  # preset section used instead when the embedded CIFAR-10 sample is the data


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (not UTF-8); a config file holds YAML text") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of option: value")
    return data


def preset_path(task: str, name: str) -> Path:
    path = CONFIG_DIR / task / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / task).glob("*.yaml"))
        raise UserError(f"unknown preset {name!r} for {task}; choose one of {', '.join(known)}")
    return path


def resolve(task: str, defaults: dict, args: argparse.Namespace) -> dict:
    """Merges the layers, each over the ones before: built-in defaults < preset < --config FILE < flags. ``args``
    holds only the flags the user typed (argparse.SUPPRESS defaults).

    A layer may hold per-dataset sections (``CIFAR10: {...}``), per-defense sections (``BTI-DBF-P: {...}``,
    in the presets of defend.py) and per-attack sections (``WaNet: {...}``, for an attack that needs its own
    recipe), applied in that order after its common keys, and an ``embedded_sample:`` section applied last, in
    that layer's place, when the run will use the embedded CIFAR-10 sample (so a --config file still beats the
    preset's section). Values are not checked here: :func:`core.jobs.validate_job` checks the merged result
    against the settings' declarations, whichever layer set them.
    """
    given = {k: v for k, v in vars(args).items() if k not in ("preset", "config")}
    layers = []
    if getattr(args, "preset", None):
        layers.append(read_yaml(preset_path(task, args.preset)))
    if getattr(args, "config", None):
        layers.append(read_yaml(args.config))
    without_sample = _merge(layers, defaults, given, None)
    config = _merge(layers, defaults, given, _sample_notes(layers, {**without_sample, **given}))
    config.update(given)
    config["preset"] = getattr(args, "preset", None)
    return config


def _merge(layers: list[dict], defaults: dict, given: dict, notes: list | None) -> dict:
    """The defaults with every layer's keys and sections over them; with ``notes`` (a list: the embedded sample is
    the data) each layer's embedded_sample section too, and ``recipe_note`` says what was chosen."""
    config = dict(defaults)
    for layer in layers:
        sections = {k: v for k, v in layer.items() if isinstance(v, dict)}
        flat = {k: v for k, v in layer.items() if not isinstance(v, dict)}
        name = given.get("dataset", flat.get("dataset", config.get("dataset")))
        attack = canonical_name(given.get("attack", flat.get("attack", config.get("attack"))))
        defense = given.get("defense", flat.get("defense", config.get("defense")))
        for source in (flat, sections.get(name, {}) if isinstance(name, str) else {},
                       sections.get(defense, {}) if isinstance(defense, str) else {},
                       sections.get(attack, {}) if attack else {}):
            _check_known(source, defaults)
            config.update(source)
        section = layer.get(EMBEDDED_SECTION)
        if isinstance(notes, list) and isinstance(section, dict):
            section = dict(section)
            notes.append(str(section.pop("note", "")).strip())
            _check_known(section, defaults)
            config.update(section)
    has_section = any(isinstance(layer.get(EMBEDDED_SECTION), dict) for layer in layers)
    if not has_section:
        config["recipe_note"] = None
    elif isinstance(notes, list):
        config["recipe_note"] = " ".join(n for n in notes if n) or EMBEDDED_SECTION
    else:
        config["recipe_note"] = notes
    return config


def _sample_notes(layers: list[dict], merged: dict):
    """[] when the run will use the embedded CIFAR-10 sample and some layer has an ``embedded_sample:`` section
    (a CPU preset sized for the full data set does not show the method on the smaller sample, so the preset
    carries its own recipe for it; the section's ``note`` says why and the run logs it); else the line that says
    why the sections are not used (or None without any)."""
    if not any(isinstance(layer.get(EMBEDDED_SECTION), dict) for layer in layers):
        return None
    if not will_use_embedded_sample(str(merged["dataset"]), merged["data_root"],
                                    bool(merged.get("allow_embedded")) and not merged.get("download")):
        return (f"the preset as written: {merged['dataset']} data was found (or --download fetches it), so its "
                f"{EMBEDDED_SECTION} section, meant for the small embedded sample, is not used")
    return []


def _check_known(source: dict, defaults: dict) -> None:
    unknown = set(source) - set(defaults)
    if unknown:
        raise UserError(f"unknown option(s) in config: {', '.join(sorted(map(str, unknown)))}")
