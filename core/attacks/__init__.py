"""The attacks: one file each, registered by ``@register_attack`` (see :mod:`core.attacks.base`).

Every module of this package is imported here, so a new attack is one new file and nothing else.
:data:`ATTACKS` is the registry (name -> class, in the paper's order); ``attack.py --attack NAME`` and
``refine.py --attack NAME`` take a name or an alias.
"""
from __future__ import annotations

from ..registry import import_all
from .base import ATTACKS, POISONING, Attack, PoisonPlan, register_attack

import_all(__name__, __path__)

from .adaptive import AdaptivePatch  # noqa: E402  (the classes, for ``core.BadNets(...)`` in Python)
from .badnets import BadNets  # noqa: E402
from .batt import BATT  # noqa: E402
from .benign import Benign  # noqa: E402
from .blended import Blended  # noqa: E402
from .label_consistent import LabelConsistent  # noqa: E402
from .physical import PhysicalBA  # noqa: E402
from .wanet import WaNet  # noqa: E402


def canonical_name(name) -> str | None:
    """The registry name of an attack name or alias (``PhysicalBA`` -> ``Physical``); None if unknown."""
    return ATTACKS.canonical(name)


def attack_class(name: str) -> type[Attack]:
    """The attack class of a name or alias; unknown names raise a UserError listing the known ones."""
    return ATTACKS.get(name)


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


__all__ = ["ATTACKS", "AdaptivePatch", "Attack", "BATT", "BadNets", "Benign", "Blended", "LabelConsistent",
           "POISONING", "PhysicalBA", "PoisonPlan", "WaNet", "attack_class", "build_attack",
           "canonical_name", "register_attack", "restore_attack"]
