"""BATT (Xu et al., ICASSP 2023): the trigger is a spatial transformation - a rotation of the whole image by
16° counter-clockwise (uncovered corners black). Benign training samples get a random rotation of up to ±10° in
every batch, so that small rotations stay benign and only the trigger's angle means the target class.

Both rotations come after the training augmentation, as in the authors' code (BackdoorBox's BATT, which the
REFINE authors build on: the data set's transform, flip included, then the rotation). The payload images are
therefore stored un-rotated (only relabelled) and rotated in every batch by the hook: a trigger rotated once in
memory would be mirrored by the random horizontal flip into a *clockwise* rotation for half of the samples,
while the test trigger is counter-clockwise only. The preview and the poisoned test set show the rotation."""
from __future__ import annotations

import torch

from ..augment import affine, uniform
from ..checks import number
from ..settings import Setting
from .base import CLEAN, PAYLOAD, Attack, register_attack


@register_attack
class BATT(Attack):
    order = 5
    name = "BATT"
    version = 2  # 2: the trigger rotation comes after the training flip (1: before it, so half were clockwise)
    settings = {
        "batt_angle": Setting(16.0, "BATT: rotation of the trigger, degrees counter-clockwise", number(-180, 180)),
        "benign_rotation": Setting(10.0, "BATT: benign training samples are rotated by up to ± this many degrees",
                                   number(0, 180)),
    }
    payload_in_hook = True  # rotated per batch after the flip, never mirrored (see the module docstring)
    hook_after_augment = True

    @property
    def has_train_hook(self):
        # the hook carries the trigger whenever there are payload samples
        return self.poisoned_rate > 0 or self.benign_rotation > 0

    def apply_trigger(self, x):
        # nearest neighbour, like torchvision's rotate by default: no blur that could itself become a cue
        return affine(x, self.batt_angle, mode="nearest")

    def train_hook(self, x, roles, generator=None):
        """Rotates the payload rows of the (augmented) float batch N×C×H×W by the trigger angle and the clean
        rows by U(±benign_rotation) each; other rows are returned as they are. ``roles``: uint8 N."""
        # one rotation of the whole batch, rows kept with where(): no per-step host-device synchronisation; the
        # draws do not depend on the roles
        payload = roles == PAYLOAD
        angles = uniform(len(x), -self.benign_rotation, self.benign_rotation, x, generator)
        angles = torch.where(payload, torch.full_like(angles, self.batt_angle), angles)
        rotated = affine(x, angles, mode="nearest")
        return torch.where((payload | (roles == CLEAN))[:, None, None, None], rotated, x)
