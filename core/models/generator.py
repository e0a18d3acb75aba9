"""BTI-DBF's generator network (Xu et al., ICLR 2024): the trigger generator G and the purifier P of
:mod:`core.defenses.bti_dbf`, also Neural Cleanse's purifier. Saved defenses rebuild it as the ``purifier``
part (:mod:`core.defenses.parts`) from ``channels`` and ``blocks``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """2 × (3×3 convolution, InstanceNorm with affine parameters, LeakyReLU 0.01)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.InstanceNorm2d(out_ch, affine=True), nn.LeakyReLU(0.01),
        nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.InstanceNorm2d(out_ch, affine=True), nn.LeakyReLU(0.01),
    )


class GeneratorUNet(nn.Module):
    """BTI-DBF's trigger generator G (and purifier P): normalized images -> normalized images, same shape.

    The topology of the authors' UNet (``base_filter_num=32, num_blocks=4``): ``blocks`` encoder blocks of
    widths c, 2c, 4c, ... (c = ``channels``, capped at 512), each followed by a 2×2 max-pool; a bottleneck
    block of twice the last width; ``blocks`` decoder stages, each a 3×3 stride-2 transposed convolution
    (same width) + LeakyReLU, concatenation with the encoder output of that resolution, and a block.
    Blocks: 2 × (3×3 conv, InstanceNorm, LeakyReLU). A 1×1 convolution gives the output, with no activation
    (outputs live in normalized image space, unbounded). Instance normalization keeps no running statistics,
    so training and eval modes compute the same function.

    Input N×3×H×W with H, W ≥ 2^(blocks+1): the bottleneck runs at H/2^blocks and its instance normalization
    needs more than one pixel (32×32 CIFAR images: blocks ≤ 4; 16×16: blocks ≤ 3). Sizes that are not
    multiples of 2^blocks are padded back to each skip connection's size.
    """

    def __init__(self, channels: int = 32, blocks: int = 4, in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {blocks}")
        widths = [min(channels * 2 ** i, 512) for i in range(blocks)]
        self.channels, self.blocks = channels, blocks
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoders.append(_conv_block(previous, width))
            previous = width
        self.bottleneck = _conv_block(previous, 2 * previous)
        previous *= 2
        self.upsamples, self.decoders = nn.ModuleList(), nn.ModuleList()
        for width in reversed(widths):
            self.upsamples.append(nn.Sequential(
                nn.ConvTranspose2d(previous, previous, 3, stride=2, padding=1, output_padding=1), nn.LeakyReLU(0.01)))
            self.decoders.append(_conv_block(previous + width, width))
            previous = width
        self.out = nn.Conv2d(previous, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N×in_channels×H×W (normalized images) -> N×out_channels×H×W."""
        if min(x.shape[2:]) < 2 ** (self.blocks + 1):
            raise UserError(f"BTI-DBF's generator with {self.blocks} blocks needs images of at least "
                            f"{2 ** (self.blocks + 1)}×{2 ** (self.blocks + 1)} pixels, got "
                            f"{x.shape[2]}×{x.shape[3]}; use fewer generator blocks")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for upsample, decoder in zip(self.upsamples, self.decoders):
            skip = skips.pop()
            x = upsample(x)
            dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
            if dy or dx:
                x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x = decoder(torch.cat([x, skip], dim=1))
        return self.out(x)
