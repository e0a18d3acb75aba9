"""PhysicalBA (Li et al., 2021, "Backdoor attack in the physical world"): the BadNets trigger, made robust to
the small changes a camera brings by passing the training samples through physical-world transformations in
every batch: horizontal flip, brightness jitter 0.1, random affine (rotation ±10°, translation 0.1, scale
0.8–0.9). Test images carry the plain trigger.

The affine step resamples as torchvision's ``RandomAffine`` with its defaults, which the authors use
(``--physical-affine nearest``): nearest-neighbour interpolation and shifts of whole pixels
(``int(round(U(−0.1·W, 0.1·W)))``, so −3..3 on 32 px). ``--physical-affine bilinear`` keeps this toolkit's
Physical version 1 transform: bilinear interpolation and continuous shifts.

*Every* training sample is transformed, poisoned or not, as BackdoorBox's PhysicalBA (the code the REFINE
authors build on) does. Transforming the poisoned samples only was tried first and fails: the black border that
scaling by 0.8–0.9 leaves appears on poisoned images alone, so the network learns the border instead of the
patch (mini preset, full CIFAR-10: ASR 2.14 %, docs/results.md)."""
from __future__ import annotations

import torch

from ..augment import affine, uniform
from ..checks import choice
from ..settings import Setting
from .badnets import BadNets
from .base import register_attack

AFFINE_MODES = ("nearest", "bilinear")


def physical_transform(x: torch.Tensor, generator=None, mode: str = "nearest") -> torch.Tensor:
    """Flip (p 0.5), brightness ×U(0.9, 1.1), rotation U(±10°), shift of up to 0.1 of the side per axis,
    scale U(0.8, 0.9); float images in [0, 1], N×C×H×W, one draw per image.

    ``mode`` ``nearest``: torchvision ``RandomAffine``'s defaults (the authors'): nearest-neighbour resampling and
    whole-pixel shifts round(U(±0.1·side)); ``bilinear``: bilinear resampling and continuous shifts U(±0.1·side)
    (version 1). Both draw the same random numbers in the same order."""
    if mode not in AFFINE_MODES:
        raise ValueError(f"unknown physical affine mode {mode!r}; choose one of {', '.join(AFFINE_MODES)}")
    n = len(x)
    flip = uniform(n, 0, 1, x, generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = (x * uniform(n, 0.9, 1.1, x, generator)[:, None, None, None]).clamp(0, 1)
    height, width = x.shape[2:]
    if mode == "nearest":  # RandomAffine.get_params: tx = int(round(U(-0.1·W, 0.1·W))), ty the same with H
        shift = torch.stack([torch.round(uniform(n, -0.1 * width, 0.1 * width, x, generator)) / width,
                             torch.round(uniform(n, -0.1 * height, 0.1 * height, x, generator)) / height], 1)
    else:
        shift = torch.stack([uniform(n, -0.1, 0.1, x, generator), uniform(n, -0.1, 0.1, x, generator)], 1)
    return affine(x, uniform(n, -10, 10, x, generator), uniform(n, 0.8, 0.9, x, generator), shift,
                  mode=mode).clamp(0, 1)


@register_attack
class PhysicalBA(BadNets):
    order = 4
    name = "Physical"
    aliases = ("PhysicalBA",)
    version = 2  # 2: nearest-neighbour affine with whole-pixel shifts by default (1: bilinear, continuous shifts)
    settings = {"physical_affine": Setting(
        "nearest", "Physical: resampling of the random affine: nearest (torchvision RandomAffine's defaults, as the "
                   "authors: nearest-neighbour, whole-pixel shifts) or bilinear (this toolkit's Physical version 1: "
                   "bilinear, continuous shifts)", choice(AFFINE_MODES))}

    def train_hook(self, x, roles, generator=None):
        return physical_transform(x, generator, self.physical_affine)  # every sample: see the module docstring
