"""No attack: the same training pipeline on clean data (the paper's benign reference models)."""
from __future__ import annotations

from .base import Attack


class Benign(Attack):
    name = "Benign"
    poisons_data = False

    def __init__(self, y_target=0, poisoned_rate=0.0, seed=0, image_size=32, **_):
        super().__init__(y_target, 0.0, seed, image_size)

    def apply_trigger(self, x):
        return x
