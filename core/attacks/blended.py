"""Blended (Chen et al., 2017): x' = (1 - alpha) * x + alpha * pattern over the whole image.

The paper blends a Hello Kitty picture at alpha = 0.1; pass any picture with ``trigger_path``.
Without one, a seeded uniform-noise image is used, which is the usual substitute in open code.
"""
from __future__ import annotations

import torch

from ..seeding import generator
from .base import Attack, load_trigger_image


class Blended(Attack):
    name = "Blended"

    def __init__(self, y_target=0, poisoned_rate=0.1, seed=0, image_size=32, trigger_path=None, alpha=0.1):
        super().__init__(y_target, poisoned_rate, seed, image_size)
        self.trigger_path = trigger_path
        self.alpha = float(alpha)
        if trigger_path:
            self.pattern = load_trigger_image(trigger_path, image_size)
        else:
            g = generator(seed, "Blended-trigger")
            self.pattern = torch.randint(0, 256, (3, image_size, image_size), generator=g).float() / 255

    def config(self):
        return {**super().config(), "alpha": self.alpha}

    def apply_trigger(self, x):
        return (1 - self.alpha) * x + self.alpha * self.pattern.to(x.device)

    def trigger_tensors(self):
        return {"pattern": (self.pattern * 255).round().to(torch.uint8), "alpha": torch.tensor(self.alpha)}
