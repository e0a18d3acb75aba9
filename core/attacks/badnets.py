"""BadNets (Gu et al., 2019): a small patch pasted onto the image.

Default trigger, as in the paper: a square of random grey levels 0–255 in the bottom-right corner,
the same on every channel; 3×3 on 32×32 images and 20×20 on ImageNet-size images.
"""
from __future__ import annotations

import torch

from ..seeding import generator
from .base import Attack, load_trigger_image


class BadNets(Attack):
    name = "BadNets"

    def __init__(self, y_target=0, poisoned_rate=0.1, seed=0, image_size=32, trigger_path=None, patch_size=None):
        super().__init__(y_target, poisoned_rate, seed, image_size)
        self.trigger_path = trigger_path
        if trigger_path:
            self.pattern = load_trigger_image(trigger_path, image_size)
            # A pattern file marks the trigger by its non-zero pixels; its bounding box is pasted, so a
            # zero grey level inside the authors' 3×3 square is pasted too.
            nz = (self.pattern > 0).any(0).nonzero()
            self.weight = torch.zeros(image_size, image_size)
            if len(nz):
                (r0, c0), (r1, c1) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
                self.weight[r0:r1 + 1, c0:c1 + 1] = 1
        else:
            size = patch_size or (3 if image_size <= 64 else 20)
            g = generator(seed, "BadNets-trigger")
            self.pattern = torch.zeros(1, image_size, image_size)
            self.pattern[0, -size:, -size:] = torch.randint(0, 256, (size, size), generator=g).float() / 255
            self.weight = torch.zeros(image_size, image_size)
            self.weight[-size:, -size:] = 1

    def apply_trigger(self, x):
        weight = self.weight.to(x.device)
        return x * (1 - weight) + self.pattern.to(x.device) * weight

    def trigger_tensors(self):
        return {"pattern": (self.pattern * 255).round().to(torch.uint8), "weight": self.weight}
