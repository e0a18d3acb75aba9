"""Configuration: built-in defaults (the paper's settings) < preset YAML < --config FILE < command-line flags."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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

    A preset may hold per-dataset sections (``CIFAR10: {...}``), applied after its common keys.
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
        for source in (flat, sections.get(given.get("dataset", flat.get("dataset", dataset)), {})):
            unknown = set(source) - set(defaults)
            if unknown:
                raise UserError(f"unknown option(s) in config: {', '.join(sorted(unknown))}")
            config.update(source)
    config.update(given)
    config["preset"] = getattr(args, "preset", None)
    return config
