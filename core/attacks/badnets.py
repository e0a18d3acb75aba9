"""BadNets (Gu et al., 2019): a small patch pasted onto the image.

Default trigger, as in the paper: a square of random grey levels 0–255 in the bottom-right corner,
the same on every channel; 3×3 on 32×32 images and 20×20 on ImageNet-size images. PhysicalBA and
Label-Consistent reuse this trigger.
"""
from __future__ import annotations

import torch

from ..seeding import generator
from .base import Attack, load_trigger_image, register_attack


@register_attack
class BadNets(Attack):
    order = 1
    name = "BadNets"
    takes_trigger_file = True
    trigger_names = ("pattern", "weight")

    def build_trigger(self):
        size = self.image_size
        if self.trigger_path:
            self.pattern = load_trigger_image(self.trigger_path, size)
            # A pattern file marks the trigger by its non-zero pixels; its bounding box is pasted, so a
            # zero grey level inside the authors' 3×3 square is pasted too.
            nz = (self.pattern > 0).any(0).nonzero()
            self.weight = torch.zeros(size, size)
            if len(nz):
                (r0, c0), (r1, c1) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
                self.weight[r0:r1 + 1, c0:c1 + 1] = 1
        else:
            side = 3 if size <= 64 else 20
            g = generator(self.seed, "BadNets-trigger")
            self.pattern = torch.zeros(1, size, size)
            self.pattern[0, -side:, -side:] = torch.randint(0, 256, (side, side), generator=g).float() / 255
            self.weight = torch.zeros(size, size)
            self.weight[-side:, -side:] = 1

    def apply_trigger(self, x):
        weight = self.weight.to(x.device)
        return x * (1 - weight) + self.pattern.to(x.device) * weight
