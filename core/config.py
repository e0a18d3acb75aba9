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
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
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
    """Merges the layers. ``args`` holds only the flags the user typed (argparse.SUPPRESS defaults).

    A preset may hold per-dataset sections (``CIFAR10: {...}``), per-defense sections (``BTI-DBF-P: {...}``,
    in the presets of defend.py) and per-attack sections (``WaNet: {...}``, for an attack that needs its own
    recipe), applied in that order after its common keys. Values are not
    checked here: :func:`core.jobs.validate_job` checks the merged result against the settings' declarations, whichever layer set them.
    """
    given = {k: v for k, v in vars(args).items() if k not in ("preset", "config")}
    config = dict(defaults)
    layers = []
    if getattr(args, "preset", None):
        layers.append(read_yaml(preset_path(task, args.preset)))
    if getattr(args, "config", None):
        layers.append(read_yaml(args.config))
    dataset = given.get("dataset", defaults.get("dataset"))
    for layer in layers:
        sections = {k: v for k, v in layer.items() if isinstance(v, dict)}
        flat = {k: v for k, v in layer.items() if not isinstance(v, dict)}
        name = given.get("dataset", flat.get("dataset", dataset))
        attack = canonical_name(given.get("attack", flat.get("attack", config.get("attack"))))
        defense = given.get("defense", flat.get("defense", config.get("defense")))
        for source in (flat, sections.get(name, {}) if isinstance(name, str) else {},
                       sections.get(defense, {}) if isinstance(defense, str) else {},
                       sections.get(attack, {}) if attack else {}):
            _check_known(source, defaults)
            config.update(source)
    config["recipe_note"] = _apply_data_section(config, given, layers, defaults)
    config.update(given)
    config["preset"] = getattr(args, "preset", None)
    return config


def _check_known(source: dict, defaults: dict) -> None:
    unknown = set(source) - set(defaults)
    if unknown:
        raise UserError(f"unknown option(s) in config: {', '.join(sorted(map(str, unknown)))}")


def _apply_data_section(config: dict, given: dict, layers: list[dict], defaults: dict) -> str | None:
    """Applies a layer's ``embedded_sample:`` section when the run will use the embedded CIFAR-10 sample.

    A CPU preset sized for the full data set does not show the method on the smaller sample (the backdoor
    or the defense has too few images to learn from), so the preset carries its own recipe for the sample.
    The section's ``note`` says why; the run logs it. Returns the note (or, when the section is not used,
    a line saying why not), None for a preset without such a section.
    """
    sections = [layer[EMBEDDED_SECTION] for layer in layers if isinstance(layer.get(EMBEDDED_SECTION), dict)]
    if not sections:
        return None
    merged = {**config, **given}
    if not will_use_embedded_sample(str(merged["dataset"]), merged["data_root"],
                                    bool(merged.get("allow_embedded")) and not merged.get("download")):
        return (f"the preset as written: {merged['dataset']} data was found (or --download fetches it), so its "
                f"{EMBEDDED_SECTION} section, meant for the small embedded sample, is not used")
    notes = []
    for section in sections:
        section = dict(section)
        notes.append(str(section.pop("note", "")).strip())
        _check_known(section, defaults)
        config.update(section)
    return " ".join(n for n in notes if n) or EMBEDDED_SECTION
