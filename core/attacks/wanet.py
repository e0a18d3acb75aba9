"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible, fixed warp of the whole image.

The warping field is a k×k grid of uniform offsets in [-1, 1], divided by its mean absolute value and
upsampled bicubically to the image size; the poisoned image samples the input at
``identity + s · field / H`` (clamped to [-1, 1]) with ``grid_sample(align_corners=True)``. The REFINE
authors' code uses k = the image size (32 on CIFAR-10) where WaNet's own code uses k = 4, hence the default
of ``wanet_k`` (None = the image size). Noise mode (off by default, as in the paper's runs): in every batch,
``cross_ratio`` × as many cover samples as payload samples are warped with the field plus fresh random
noise and keep their labels, so that the network learns the exact warp, not any warp.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import boolean, integer, number
from ..seeding import generator
from ..settings import Setting
from .base import COVER, Attack, register_attack


@register_attack
class WaNet(Attack):
    order = 3
    name = "WaNet"
    settings = {
        "wanet_k": Setting(None, "WaNet: side of the random control grid (default: the image size, as the REFINE "
                                 "authors' code; WaNet's own code uses 4)", integer(2, 224, optional=True)),
        "wanet_s": Setting(0.5, "WaNet: warping strength s", number(0)),
        "wanet_noise": Setting(False, "WaNet: noise mode (cover samples warped with extra random noise, label kept)",
                               boolean()),
        "cross_ratio": Setting(2.0, "WaNet noise mode: cover samples per payload sample", number(0)),
    }
    trigger_names = ("field",)

    def build_trigger(self):
        self.wanet_k = self.wanet_k or self.image_size
        g = generator(self.seed, "WaNet-field")
        offsets = torch.rand(1, 2, self.wanet_k, self.wanet_k, generator=g) * 2 - 1
        offsets = offsets / offsets.abs().mean()
        field = F.interpolate(offsets, size=self.image_size, mode="bicubic", align_corners=True)
        self.field = field.permute(0, 2, 3, 1)  # 1×H×W×2, (x, y) offsets as grid_sample reads them

    def grid(self, device) -> torch.Tensor:
        """The sampling grid of the poisoned image, 1×H×W×2 in [-1, 1]."""
        side = torch.linspace(-1, 1, self.image_size, device=device)
        rows, cols = torch.meshgrid(side, side, indexing="ij")
        identity = torch.stack([cols, rows], dim=2).unsqueeze(0)
        return (identity + self.wanet_s * self.field.to(device) / self.image_size).clamp(-1, 1)

    def apply_trigger(self, x):
        grid = self.grid(x.device).to(x.dtype).expand(len(x), -1, -1, -1)
        return F.grid_sample(x, grid, align_corners=True).clamp(0, 1)

    def cover_count(self, labels):
        return int(round(self.cross_ratio * self.payload_count(labels))) if self.wanet_noise else 0

    @property
    def cover_in_hook(self):
        return self.wanet_noise  # cover samples get a fresh noisy warp in every batch, nothing baked in

    @property
    def has_train_hook(self):
        return self.wanet_noise

    def train_hook(self, x, roles, generator=None):
        # the whole batch is warped and the cover rows picked with where(): boolean indexing would cost a
        # host-device synchronisation per step on a GPU
        noise = torch.rand(len(x), self.image_size, self.image_size, 2, device=x.device, generator=generator) * 2 - 1
        grid = (self.grid(x.device) + noise / self.image_size).clamp(-1, 1)
        noisy = F.grid_sample(x, grid.to(x.dtype), align_corners=True).clamp(0, 1)
        return torch.where((roles == COVER)[:, None, None, None], noisy, x)
