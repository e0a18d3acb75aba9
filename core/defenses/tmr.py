"""T-MR: traditional model reprogramming (Elsayed et al., ICLR 2019) as a backdoor defense (REFINE paper,
Appendix D.6, Table 10). REFINE's method with T = one universal additive perturbation instead of the UNet:
x -> clamp(x + δ, 0, 1), δ of the image's shape, trained with REFINE's loss and label derangement."""
from __future__ import annotations

import torch.nn as nn

from ..data import Split
from .base import register_defense
from .parts import UniversalPerturbation
from .refine import RefineDefense


@register_defense
class TMR(RefineDefense):
    name = "T-MR"
    aliases = ("TMR",)
    order = 60
    summary = "REFINE with a universal additive perturbation instead of the UNet (paper Appendix D.6)"
    preset_task = "defense"
    output_root, own_folder = "defense_res", True
    # no UNet: its width and input space are not T-MR's settings (the perturbation is added to the [0, 1] image)
    settings = {k: v for k, v in RefineDefense.settings.items() if k not in ("unet_channels", "unet_input")}

    def transform(self, data: Split) -> nn.Module:
        _, channels, height, width = data.images.shape
        return UniversalPerturbation(channels, height, width)
