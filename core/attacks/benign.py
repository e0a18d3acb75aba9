"""No attack: the same training pipeline on clean data (the paper's benign reference models)."""
from __future__ import annotations

from .base import Attack, register_attack


@register_attack
class Benign(Attack):
    order = 0
    name = "Benign"
    poisons_data = False

    def __init__(self, y_target=0, poisoned_rate=None, **kwargs):
        super().__init__(y_target, 0.0, **kwargs)  # nothing is poisoned, whatever rate is passed

    def apply_trigger(self, x):
        return x
