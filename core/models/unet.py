"""UNet input transform of REFINE: 4 down / 4 up stages, bilinear upsampling, skip connections.

``channels`` is the width of the first layer (64 on CIFAR-10 and 32 on ImageNet-50 in the paper);
stage widths are c, 2c, 4c, 8c, 8c. Input and output: float images in [0, 1], N×3×H×W with H, W
divisible by 16; the output is clamped to [0, 1] so that it is again a valid image.

A plain clamp gives zero gradient to out-of-range pixels. A straight-through clamp (identity gradient)
trained faster on the tiny test problem but collapsed on real CIFAR-10 (every output saturated, BA 8 %
after 2 epochs of the mini recipe), so the plain clamp stays.

The clamp is why the output layer starts with bias 0.5 and its default weights scaled by 0.1 (T(x) is
mid-grey plus a small input-dependent image at first): with PyTorch's default initialisation whole output
channels can start below 0, and a clamped pixel passes no gradient, so those channels learn slowly or never
(seed 0, 16 channels: 2 of 3 channels fully clamped in eval mode, 17-41 % of pixels in training mode).
The weights must not start at exactly zero: then T(x) is the same grey image for every input, the gradients
of the batch cancel by symmetry, and the paper's SGD (lr 0.01) never leaves that point (measured on an H100:
UNet 64, BA 10.00 and a constant loss for 31 epochs); Adam's normalised steps escaped it, which hid the trap.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Module):
    def __init__(self, in_ch, out_ch, mid_ch=None):
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False), nn.BatchNorm2d(mid_ch), nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_ch, out_ch, in_ch // 2)

    def forward(self, x, skip):
        x = self.up(x)
        # odd sizes: pad the upsampled map to the skip connection's size
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    part_name = "unet"  # as a part of a deployed defense (core.defenses.parts)

    def __init__(self, channels: int = 64, in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        c = channels
        self.channels = channels  # recorded in saved defenses: the part is rebuilt from it (core.defenses.parts)
        self.inc = DoubleConv(in_channels, c)
        self.down1, self.down2, self.down3 = Down(c, 2 * c), Down(2 * c, 4 * c), Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 8 * c)
        self.up1, self.up2 = Up(16 * c, 4 * c), Up(8 * c, 2 * c)
        self.up3, self.up4 = Up(4 * c, c), Up(2 * c, c)
        self.outc = nn.Conv2d(c, out_channels, 1)
        with torch.no_grad():  # start inside [0, 1], where the clamp passes gradients (see above)
            self.outc.weight.mul_(0.1)
        nn.init.constant_(self.outc.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up4(self.up3(self.up2(self.up1(x5, x4), x3), x2), x1)
        return self.outc(x).clamp(0, 1)

    def part_spec(self) -> dict:
        return {"channels": self.channels}
