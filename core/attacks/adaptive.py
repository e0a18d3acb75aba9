"""Adaptive-Patch (Qi et al., ICLR 2023): a backdoor built to look like a clean model's latent space.

Four patch triggers, each blended at its own opacity (0.5, 0.5, 0.2, 0.3); 1 % of the training set carries a
trigger and the target label (payload), another 2 % carries a trigger and keeps its true label (cover), which
keeps the poisoned samples from forming a cluster of their own. Payload and cover samples each carry one
trigger, cycling through the four. At test time the first two triggers are applied together, at full opacity.

The authors use four small pictures; here comparable ones are generated from the seed (no third-party
images): a 5×5 patch in the top-left corner, four 2×2 marks near the corners, a 13×13 round coloured logo near
the top right and an 8×8 square near the bottom right (positions for 32×32 images, scaled for larger ones).
Their colours are saturated, like the authors' logos and black-and-white patches: mid-tone random colours,
blended at 0.2–0.5, barely stand out from natural pixels, and the width-16 mini model then memorised the 500
payload images instead of learning the patches (ASR 27.70 % after 40 epochs, docs/attacks.md).
``trigger_dir`` loads four image files instead (sorted by name; full image size, black = no trigger).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checks import existing_folder, number, number_list
from ..errors import UserError
from ..seeding import generator
from ..settings import Setting
from .base import Attack, load_trigger_image, register_attack

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# The seven saturated colours other than black (RGB in {0, 1}): white first, then the six others.
PALETTE = torch.tensor([[1.0, 1.0, 1.0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]])


def saturated_colours(height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """3×height×width pixels drawn from :data:`PALETTE` (never black: black marks "no trigger" in image files)."""
    return PALETTE[torch.randint(len(PALETTE), (height, width), generator=g)].permute(2, 0, 1)


def upsampled(pattern: torch.Tensor, size: int) -> torch.Tensor:
    """A C×h×w pattern enlarged to C×size×size in blocks (nearest neighbour, so the colours stay saturated)."""
    return F.interpolate(pattern[None], size=size, mode="nearest")[0]


@register_attack
class AdaptivePatch(Attack):
    order = 7
    name = "Adaptive"
    aliases = ("AdaptivePatch",)
    default_poisoned_rate = 0.01
    settings = {
        "cover_rate": Setting(0.02, "Adaptive: share of the training set carrying a trigger with its true label",
                              number(0, 1)),
        "patch_opacity": Setting((0.5, 0.5, 0.2, 0.3), "Adaptive: opacity of each of the four patches in training",
                                 number_list(0, 1, length=4)),
        "trigger_dir": Setting(None, "Adaptive: folder of four trigger images (sorted by name, full image size, "
                                     "black = no trigger) instead of the generated ones",
                               existing_folder()),
    }
    trigger_names = ("patches", "masks")

    def build_trigger(self):
        if self.trigger_dir:
            files = sorted(p for p in Path(self.trigger_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if len(files) != 4:
                raise UserError(f"--trigger-dir must hold exactly 4 images, found {len(files)} in {self.trigger_dir}")
            self.patches = torch.stack([load_trigger_image(f, self.image_size).expand(3, -1, -1) for f in files])
            self.masks = (self.patches > 0).any(1).float()
            return
        g = generator(self.seed, "Adaptive-triggers")
        patches, masks = torch.zeros(4, 3, 32, 32), torch.zeros(4, 32, 32)

        def put(k, rows, cols, pattern):
            patches[k, :, rows, cols] = pattern
            masks[k, rows, cols] = 1

        put(0, slice(0, 5), slice(0, 5), saturated_colours(5, 5, g))  # corner patch
        checker = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        for r in (6, 24):  # four marks, each a 2×2 checkerboard of a colour and its complement
            for c in (6, 24):
                colour = PALETTE[1 + int(torch.randint(6, (), generator=g))]  # neither black nor white
                put(1, slice(r, r + 2), slice(c, c + 2), colour[:, None, None] * checker + (1 - colour)[:, None, None]
                    * (1 - checker))
        put(2, slice(1, 14), slice(18, 31), upsampled(saturated_colours(4, 4, g), 13))
        yy, xx = torch.meshgrid(torch.arange(13.0), torch.arange(13.0), indexing="ij")
        masks[2, 1:14, 18:31] = (((yy - 6) ** 2 + (xx - 6) ** 2) <= 6.5 ** 2).float()  # round logo
        put(3, slice(22, 30), slice(22, 30), upsampled(saturated_colours(4, 4, g), 8))  # 2-pixel blocks
        if self.image_size != 32:
            patches = F.interpolate(patches, size=self.image_size, mode="nearest")
            masks = F.interpolate(masks[:, None], size=self.image_size, mode="nearest")[:, 0]
        self.patches, self.masks = patches * masks[:, None], masks

    def cover_count(self, labels):
        return int(round(self.cover_rate * len(labels)))

    def _blend(self, x, which: torch.Tensor, opacity: torch.Tensor):
        """Blends patch ``which[i]`` into image i at ``opacity[i]``."""
        weight = self.masks.to(x.device)[which][:, None] * opacity.to(x)[:, None, None, None]
        return x * (1 - weight) + self.patches.to(x.device)[which] * weight

    def apply_train_trigger(self, x, order):
        which = order.to(x.device) % 4
        return self._blend(x, which, torch.tensor(self.patch_opacity, device=x.device)[which])

    def apply_trigger(self, x):
        ones = torch.ones(len(x), device=x.device)
        for k in (0, 1):
            x = self._blend(x, torch.full((len(x),), k, device=x.device), ones)
        return x
