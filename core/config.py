"""Configuration: built-in defaults (the paper's settings) < preset YAML < --config FILE < command-line flags."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .attacks import canonical_name
from .data import DATASETS, will_use_embedded_sample
from .errors import UserError
from .settings import SECTIONS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
EMBEDDED_SECTION = "embedded_sample"  # preset section used instead when the embedded CIFAR-10 sample is the data


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} " + ("is a folder; pass a YAML file" if path.is_dir() else "does not exist"))
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
    config, _ = _merge(layers, defaults, given, with_sample=False)
    note = None
    if any(isinstance(layer.get(EMBEDDED_SECTION), dict) for layer in layers):
        # A CPU preset sized for the full data set does not show the method on the smaller embedded sample (too
        # few images to learn from), so it carries its own recipe for the sample; the section's note says why.
        merged = {**config, **given}
        if will_use_embedded_sample(str(merged["dataset"]), merged["data_root"],
                                    bool(merged.get("allow_embedded")) and not merged.get("download")):
            config, notes = _merge(layers, defaults, given, with_sample=True)
            note = " ".join(n for n in notes if n) or EMBEDDED_SECTION
        else:
            note = (f"the preset as written: {merged['dataset']} data was found (or --download fetches it), so its "
                    f"{EMBEDDED_SECTION} section, meant for the small embedded sample, is not used")
    config["recipe_note"] = note
    config.update(given)
    config["preset"] = getattr(args, "preset", None)
    return config


def _merge(layers: list[dict], defaults: dict, given: dict, with_sample: bool) -> tuple[dict, list[str]]:
    """The defaults with every layer's keys and sections over them, in order; ``with_sample``: each layer's
    embedded_sample section too, in that layer's place. Returns the config and the sections' notes."""
    config, notes = dict(defaults), []
    for layer in layers:
        sections = {k: v for k, v in layer.items() if isinstance(v, dict)}
        flat = {k: v for k, v in layer.items() if not isinstance(v, dict)}
        for key in [k for k in sections if k in SECTIONS]:  # a run's config.yaml (nested by section) replayed
            flat.update(sections.pop(key))
        _check_sections(sections)
        name = given.get("dataset", flat.get("dataset", config.get("dataset")))
        attack = canonical_name(given.get("attack", flat.get("attack", config.get("attack"))))
        defense = given.get("defense", flat.get("defense", config.get("defense")))
        for source in (flat, sections.get(name, {}) if isinstance(name, str) else {},
                       sections.get(defense, {}) if isinstance(defense, str) else {},
                       sections.get(attack, {}) if attack else {}):
            _check_known(source, defaults)
            config.update(source)
        section = layer.get(EMBEDDED_SECTION)
        if with_sample and isinstance(section, dict):
            section = dict(section)
            notes.append(str(section.pop("note", "")).strip())
            _check_known(section, defaults)
            config.update(section)
    return config, notes


def _check_sections(sections: dict) -> None:
    """A section must name a data set, an attack or a defense (or be the embedded_sample section): a misspelt
    one would be ignored without a word."""
    from .attacks import ATTACKS
    from .defenses import DEFENSES

    known = {*DATASETS, EMBEDDED_SECTION, *ATTACKS.names(), *ATTACKS.aliases, *DEFENSES.names(), *DEFENSES.aliases}
    unknown = sorted(map(str, set(sections) - known))
    if unknown:
        raise UserError(f"unknown section(s) in config: {', '.join(unknown)}; a section is named after a data set "
                        f"({', '.join(DATASETS)}), an attack or a defense, or is embedded_sample")


def _check_known(source: dict, defaults: dict) -> None:
    unknown = set(source) - set(defaults)
    if unknown:
        raise UserError(f"unknown option(s) in config: {', '.join(sorted(map(str, unknown)))}")
