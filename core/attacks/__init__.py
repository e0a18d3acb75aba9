"""Attack registry: the names accepted by ``attack.py --attack`` and ``refine.py --attack``."""
from __future__ import annotations

from ..errors import UserError
from .badnets import BadNets
from .base import Attack
from .benign import Benign
from .blended import Blended

ATTACKS = {cls.name: cls for cls in (Benign, BadNets, Blended)}
# Attacks of the paper that are not built yet: named so the error can say so.
PLANNED = ("WaNet", "Physical", "BATT", "LC", "Adaptive")


def build_attack(name: str, **kwargs) -> Attack:
    """Constructs an attack by its registry name; unknown names raise a UserError listing the known ones."""
    if name not in ATTACKS:
        hint = " (planned, not implemented yet)" if name in PLANNED else ""
        raise UserError(f"unknown attack {name!r}{hint}; choose one of {', '.join(ATTACKS)}")
    return ATTACKS[name](**kwargs)


__all__ = ["Attack", "ATTACKS", "BadNets", "Benign", "Blended", "build_attack"]
