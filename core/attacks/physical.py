"""PhysicalBA (Li et al., 2021, "Backdoor attack in the physical world"): the BadNets trigger, made robust to
the small changes a camera brings by passing the training samples through physical-world transformations in
every batch: horizontal flip, brightness jitter 0.1, random affine (rotation ±10°, translation 0.1, scale
0.8–0.9). Test images carry the plain trigger.

*Every* training sample is transformed, poisoned or not, as BackdoorBox's PhysicalBA (the code the REFINE
authors build on) does. Transforming the poisoned samples only was tried first and fails: the black border that
scaling by 0.8–0.9 leaves appears on poisoned images alone, so the network learns the border instead of the
patch (mini preset, full CIFAR-10: ASR 2.14 %, docs/results.md)."""
from __future__ import annotations

import torch

from ..augment import affine, uniform
from .badnets import BadNets
from .base import register_attack


def physical_transform(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Flip (p 0.5), brightness ×U(0.9, 1.1), rotation U(±10°), shift U(±0.1) per axis, scale U(0.8, 0.9);
    float images in [0, 1], N×C×H×W, one draw per image."""
    n = len(x)
    flip = uniform(n, 0, 1, x, generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = (x * uniform(n, 0.9, 1.1, x, generator)[:, None, None, None]).clamp(0, 1)
    shift = torch.stack([uniform(n, -0.1, 0.1, x, generator), uniform(n, -0.1, 0.1, x, generator)], 1)
    return affine(x, uniform(n, -10, 10, x, generator), uniform(n, 0.8, 0.9, x, generator), shift).clamp(0, 1)


@register_attack
class PhysicalBA(BadNets):
    order = 4
    name = "Physical"
    aliases = ("PhysicalBA",)

    def train_hook(self, x, roles, generator=None):
        return physical_transform(x, generator)  # every sample: see the module docstring
