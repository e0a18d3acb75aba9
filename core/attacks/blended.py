"""Blended (Chen et al., 2017): x' = (1 - alpha) * x + alpha * pattern over the whole image.

The paper blends a Hello Kitty picture at alpha = 0.1; pass any picture with ``trigger_path``.
Without one, a seeded uniform-noise image is used, which is the usual substitute in open code.
"""
from __future__ import annotations

import torch

from ..seeding import generator
from ..checks import number
from ..settings import Setting
from .base import Attack, load_trigger_image, register_attack


@register_attack
class Blended(Attack):
    order = 2
    name = "Blended"
    takes_trigger_file = True
    settings = {"alpha": Setting(0.1, "Blended: blend ratio of the trigger picture", number(0, 1, lo_open=True))}
    trigger_names = ("pattern",)

    def build_trigger(self):
        if self.trigger_path:
            self.pattern = load_trigger_image(self.trigger_path, self.image_size)
        else:
            g = generator(self.seed, "Blended-trigger")
            self.pattern = torch.randint(0, 256, (3, self.image_size, self.image_size), generator=g).float() / 255

    def apply_trigger(self, x):
        return (1 - self.alpha) * x + self.alpha * self.pattern.to(x.device)
