"""Adaptive-Patch (Qi et al., ICLR 2023): a backdoor built to look like a clean model's latent space.

Four patch triggers, each blended at its own opacity (0.5, 0.5, 0.2, 0.3); 1 % of the training set carries a
trigger and the target label (payload), another 2 % carries a trigger and keeps its true label (cover), which
keeps the poisoned samples from forming a cluster of their own. Payload and cover samples each carry one
trigger, cycling through the four. At test time patterns 1 and 2 are applied together at full opacity, as in
both authors' code (the REFINE repository's core/attacks/AdaptivePatch.py blends its test set with alphas
``[1] * 4``; Qi et al.'s backdoor-toolbox config.py, ``adaptive_patch_test_trigger_alphas``: 1, 1).

The authors' four pictures (backdoor-toolbox ``triggers/``, copied into REFINE's
``attack/triggers/adaptive_triggers/``), in the order REFINE passes them, for 32×32 images:

1. ``phoenix_corner_32.png``: a 5×5 logo in the bottom-right corner, rows and columns 27–31 (opacity 0.5);
2. ``badnet_patch4_32.png``: four 3×3 black-and-white marks in the image corners, rows and columns 0–2 and
   29–31 (0.5);
3. ``firefox_corner_32.png``: a 13×13 round logo, rows 1–13, columns 18–30 (0.2);
4. ``trojan_square_32.png``: an 8×8 square, rows and columns 21–28 (0.3).

Here comparable patches are generated from the seed at those places (no third-party images), in saturated
colours like the authors' logos and black-and-white patches: mid-tone random colours, blended at 0.2–0.5,
barely stand out from natural pixels, and the width-16 mini model then memorised the 500 payload images
instead of learning the patches (ASR 27.70 % after 40 epochs, docs/attacks.md). Larger images get the 32×32
layout enlarged.
``trigger_dir`` loads the authors' four pictures (or others under their names) instead: see :func:`role_files`.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checks import existing_folder, number, number_list
from ..errors import UserError
from ..seeding import generator
from ..settings import Setting
from .base import Attack, load_trigger_image, register_attack

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# The authors' file names (without the _<size> suffix), patterns 1-4 in REFINE's order (its opacities 0.5, 0.5,
# 0.2, 0.3 go with them in this order; patterns 1 and 2 make the test trigger).
ROLE_NAMES = ("phoenix_corner", "badnet_patch4", "firefox_corner", "trojan_square")


# The seven saturated colours other than black (RGB in {0, 1}): white first, then the six others.
PALETTE = torch.tensor([[1.0, 1.0, 1.0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]])


def saturated_colours(height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """3×height×width pixels drawn from :data:`PALETTE` (never black: black marks "no trigger" in image files)."""
    return PALETTE[torch.randint(len(PALETTE), (height, width), generator=g)].permute(2, 0, 1)


def upsampled(pattern: torch.Tensor, size: int) -> torch.Tensor:
    """A C×h×w pattern enlarged to C×size×size in blocks (nearest neighbour, so the colours stay saturated)."""
    return F.interpolate(pattern[None], size=size, mode="nearest")[0]


def role_files(folder: Path, image_size: int) -> list[Path]:
    """The four pictures of ``folder``, patterns 1-4: for each of :data:`ROLE_NAMES` the file called
    ``<name>.<suffix>`` or ``<name>_<size>.<suffix>`` (the authors' ``phoenix_corner_32.png``). Where several
    sizes are there (REFINE's folder holds _32 and _224), the one of ``image_size``. Other files are ignored
    (backdoor-toolbox's ``mask_*`` pictures and ``phoenix_corner2_32.png`` too), so the authors' whole
    ``triggers`` folder works. Never sorted by name: that order would give the pictures each other's opacities."""
    found: dict[str, dict[int | None, Path]] = {name: {} for name in ROLE_NAMES}
    for path in folder.iterdir():
        match = re.fullmatch(r"(.+?)(?:_(\d+))?", path.stem)
        if path.suffix.lower() in IMAGE_SUFFIXES and match and match[1] in found:
            found[match[1]][int(match[2]) if match[2] else None] = path
    hint = (f"--trigger-dir takes the authors' four pictures by name: {', '.join(ROLE_NAMES)} (each .png or "
            f"_<size>.png, e.g. phoenix_corner_32.png; patterns 1-4, blended at --patch-opacity in that order, "
            f"patterns 1 and 2 at test time); rename the pictures of {folder} so")
    files = []
    for name, sizes in found.items():
        if not sizes:
            raise UserError(f"no {name} picture in {folder}: {hint}")
        path = sizes.get(image_size) or sizes.get(None) or (next(iter(sizes.values())) if len(sizes) == 1 else None)
        if path is None:
            raise UserError(f"{len(sizes)} {name} pictures in {folder} "
                            f"({', '.join(sorted(p.name for p in sizes.values()))}), none for {image_size}×"
                            f"{image_size} images: {hint}")
        files.append(path)
    return files


@register_attack
class AdaptivePatch(Attack):
    order = 7
    name = "Adaptive"
    aliases = ("AdaptivePatch",)
    version = 2  # 2: --trigger-dir pictures by name, not sorted; generated patches at the authors' places
    default_poisoned_rate = 0.01
    settings = {
        "cover_rate": Setting(0.02, "Adaptive: share of the training set carrying a trigger with its true label",
                              number(0, 1)),
        "patch_opacity": Setting((0.5, 0.5, 0.2, 0.3), "Adaptive: opacity of each of the four patches in training "
                                 "(phoenix corner, badnet marks, firefox logo, trojan square)",
                                 number_list(0, 1, length=4)),
        "trigger_dir": Setting(None, "Adaptive: folder with the authors' four pictures instead of the generated "
                                     "patches, found by name: phoenix_corner, badnet_patch4, firefox_corner, "
                                     "trojan_square (.png or _<size>.png; black = no trigger)",
                               existing_folder()),
    }
    trigger_names = ("patches", "masks")

    def build_trigger(self):
        if self.trigger_dir:
            files = role_files(Path(self.trigger_dir), self.image_size)
            self.patches = torch.stack([load_trigger_image(f, self.image_size).expand(3, -1, -1) for f in files])
            self.masks = (self.patches > 0).any(1).float()  # as REFINE's code: its folder has no mask pictures
            return
        g = generator(self.seed, "Adaptive-triggers")
        patches, masks = torch.zeros(4, 3, 32, 32), torch.zeros(4, 32, 32)

        def put(k, rows, cols, pattern):
            patches[k, :, rows, cols] = pattern
            masks[k, rows, cols] = 1

        put(0, slice(27, 32), slice(27, 32), saturated_colours(5, 5, g))  # 5×5 corner patch, bottom right
        checker = (torch.arange(3)[:, None] + torch.arange(3)[None]) % 2 == 0  # 3×3, corners and centre set
        for r in (0, 29):  # four 3×3 marks in the image corners, each a checkerboard of a colour and its complement
            for c in (0, 29):
                colour = PALETTE[1 + int(torch.randint(6, (), generator=g))]  # neither black nor white
                put(1, slice(r, r + 3), slice(c, c + 3), torch.where(checker, colour[:, None, None],
                                                                     (1 - colour)[:, None, None]))
        put(2, slice(1, 14), slice(18, 31), upsampled(saturated_colours(4, 4, g), 13))
        yy, xx = torch.meshgrid(torch.arange(13.0), torch.arange(13.0), indexing="ij")
        masks[2, 1:14, 18:31] = (((yy - 6) ** 2 + (xx - 6) ** 2) <= 6.5 ** 2).float()  # round logo
        put(3, slice(21, 29), slice(21, 29), upsampled(saturated_colours(4, 4, g), 8))  # 2-pixel blocks
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
        """Patterns 1 and 2 at full opacity. Pattern 2 goes on first, so pattern 1 covers it where they meet (the
        bottom-right corner), as in REFINE's code: it inserts each test trigger transform at the same index,
        which runs them in reverse order."""
        ones = torch.ones(len(x), device=x.device)
        for k in (1, 0):
            x = self._blend(x, torch.full((len(x),), k, device=x.device), ones)
        return x
