"""Configuration: built-in defaults (the paper's settings) < preset YAML < --config FILE < command-line flags."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .attacks import ATTACKS, canonical_name
from .data import DATASETS, will_use_embedded_sample
from .defenses import DEFENSES
from .errors import UserError
from .models import MODELS
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

    A layer may hold per-dataset sections (``CIFAR10: {...}``), per-model sections (``VGG16: {lr: 0.01}``),
    per-defense sections (``BTI-DBF-P: {...}``, in the presets of defend.py) and per-attack sections (``WaNet:
    {...}``, for an attack that needs its own recipe), applied in that order after its common keys (a section may
    nest sections: ``ImageNet50: {LC: {...}}``), and an ``embedded_sample:`` section applied last, in
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
        layer = dict(layer)
        for key in [k for k, v in layer.items() if k in SECTIONS and isinstance(v, dict)]:
            layer.update(layer.pop(key))  # a run's config.yaml (nested by section) replayed
        _apply(layer, config, defaults, given)
        section = layer.get(EMBEDDED_SECTION)
        if with_sample and isinstance(section, dict):
            section = dict(section)
            notes.append(str(section.pop("note", "")).strip())
            _check_known(section, defaults)
            config.update(section)
    return config, notes


def _apply(block: dict, config: dict, defaults: dict, given: dict) -> None:
    """``block``'s plain keys over ``config``, then its sections that match this run, in the order data set,
    model, defense, attack - each applied the same way, so that a section may hold sections of its own
    (``ImageNet50: {LC: {poisoned_rate: 1.0}}``: LC's rate on ImageNet-50 only)."""
    sections = {k: v for k, v in block.items() if isinstance(v, dict) and k != EMBEDDED_SECTION}
    flat = {k: v for k, v in block.items() if not isinstance(v, dict)}
    _check_sections(sections)
    _check_known(flat, defaults)
    config.update(flat)
    current = {**config, **given}
    for name in (current.get("dataset"), current.get("model"), current.get("defense"),
                 canonical_name(current.get("attack"))):
        if isinstance(name, str) and name in sections:
            _apply(sections[name], config, defaults, given)


def _check_sections(sections: dict) -> None:
    """A section must name a data set, a model, an attack or a defense (or be the embedded_sample section): a misspelt
    one would be ignored without a word."""
    models = {name for _, name in MODELS}
    known = {*DATASETS, *models, EMBEDDED_SECTION, *ATTACKS.names(), *ATTACKS.aliases, *DEFENSES.names(),
             *DEFENSES.aliases}
    unknown = sorted(map(str, set(sections) - known))
    if unknown:
        raise UserError(f"unknown section(s) in config: {', '.join(unknown)}; a section is named after a data set "
                        f"({', '.join(DATASETS)}), a model, an attack or a defense, or is embedded_sample")


def _check_known(source: dict, defaults: dict) -> None:
    unknown = set(source) - set(defaults)
    if unknown:
        raise UserError(f"unknown option(s) in config: {', '.join(sorted(map(str, unknown)))}")
