"""BATT (Xu et al., ICASSP 2023): the trigger is a spatial transformation - a rotation of the whole image by
16° (uncovered corners black). Benign training samples get a random rotation of up to ±10° in every batch, so
that small rotations stay benign and only the trigger's angle means the target class."""
from __future__ import annotations

import torch

from ..augment import affine, uniform
from ..checks import number
from ..settings import Setting
from .base import CLEAN, Attack, register_attack


@register_attack
class BATT(Attack):
    order = 5
    name = "BATT"
    settings = {
        "batt_angle": Setting(16.0, "BATT: rotation of the trigger, degrees counter-clockwise", number(-180, 180)),
        "benign_rotation": Setting(10.0, "BATT: benign training samples are rotated by up to ± this many degrees",
                                   number(0, 180)),
    }

    @property
    def has_train_hook(self):
        return self.benign_rotation > 0

    def apply_trigger(self, x):
        # nearest neighbour, like torchvision's rotate by default: no blur that could itself become a cue
        return affine(x, self.batt_angle, mode="nearest")

    def train_hook(self, x, roles, generator=None):
        # rotate the whole batch and keep the clean rows: no per-step host-device synchronisation
        angles = uniform(len(x), -self.benign_rotation, self.benign_rotation, x, generator)
        return torch.where((roles == CLEAN)[:, None, None, None], affine(x, angles, mode="nearest"), x)
