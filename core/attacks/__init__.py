"""Attack registry: the names accepted by ``attack.py --attack`` and ``refine.py --attack`` (and aliases)."""
from __future__ import annotations

from ..errors import UserError
from .adaptive import AdaptivePatch
from .badnets import BadNets
from .base import Attack, PoisonPlan, Setting
from .batt import BATT
from .benign import Benign
from .blended import Blended
from .label_consistent import LabelConsistent
from .physical import PhysicalBA
from .wanet import WaNet

ATTACKS = {cls.name: cls for cls in (Benign, BadNets, Blended, WaNet, PhysicalBA, BATT, LabelConsistent,
                                     AdaptivePatch)}
ALIASES = {alias: cls.name for cls in ATTACKS.values() for alias in cls.aliases}


def canonical_name(name) -> str | None:
    """The registry name of an attack name or alias (``PhysicalBA`` -> ``Physical``); None if unknown."""
    if name in ATTACKS:
        return name
    return ALIASES.get(name)


def attack_class(name: str) -> type[Attack]:
    """The attack class of a name or alias; unknown names raise a UserError listing the known ones."""
    canonical = canonical_name(name)
    if canonical is None:
        raise UserError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    return ATTACKS[canonical]


def all_settings() -> dict[str, tuple[Setting, list[str]]]:
    """Every per-attack setting: key -> (its Setting, the attacks that declare it)."""
    found: dict[str, tuple[Setting, list[str]]] = {}
    for cls in ATTACKS.values():
        for key, setting in cls.settings.items():
            found.setdefault(key, (setting, []))[1].append(cls.name)
    return found


def build_attack(name: str, **kwargs) -> Attack:
    """Constructs an attack by its registry name or alias (see :class:`Attack` for the arguments)."""
    return attack_class(name)(**kwargs)


def restore_attack(config: dict, tensors: dict | None, **kwargs) -> Attack:
    """The attack that ``config`` (:meth:`Attack.config`) and its saved trigger ``tensors`` describe, as it was
    trained: the trigger comes from the tensors, not from the seed. ``kwargs`` override (e.g. ``image_size``)."""
    cls = attack_class(config["attack"])
    args = {"y_target": config.get("y_target", 0), "poisoned_rate": config.get("poisoned_rate"),
            "seed": config.get("seed", 0), "image_size": config.get("image_size", 32),
            "trigger_path": config.get("trigger_path"),  # with tensors given, recorded only (the file is not read)
            **{k: config[k] for k in cls.settings if k in config}, **kwargs}
    if tensors:
        args["trigger_tensors"] = tensors
    return cls(**args)


__all__ = ["ALIASES", "ATTACKS", "AdaptivePatch", "Attack", "BATT", "BadNets", "Benign", "Blended",
           "LabelConsistent", "PhysicalBA", "PoisonPlan", "Setting", "WaNet", "attack_class", "all_settings",
           "build_attack", "canonical_name", "restore_attack"]
