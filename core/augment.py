"""Batched data augmentation on the device: one call per batch, no per-sample Python.

All functions take and return float images in [0, 1], N×C×H×W, and draw randomness from an
optional ``torch.Generator`` living on the images' device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(n, x, generator):
    return torch.rand(n, device=x.device, generator=generator)


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator=None) -> torch.Tensor:
    """Random crop of the zero-padded image (torchvision ``RandomCrop(H, padding)``) + horizontal flip p=0.5."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = (_rand(n, x, generator) * (2 * padding + 1)).long()
    ox = (_rand(n, x, generator) * (2 * padding + 1)).long()
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    flip = _rand(n, x, generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def crop_sizes(n: int, x: torch.Tensor, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), mode: str = "redraw",
               attempts: int = 10, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height (fractions of the side) of ``n`` random resized crops of a square image.

    ``redraw`` (torchvision's ``RandomResizedCrop``, hence the authors' REFINE code): up to ``attempts`` draws
    of area and aspect ratio per image, the first that fits inside the image is used, the whole image when none
    does - all attempts drawn at once, no per-sample loop. ``clamp`` (this toolkit before 2026-11-27): one
    draw, an oversized side clamped to the image (with scale 0.8-1 most draws are clamped, so crops are larger
    on average: mean area about 0.87 instead of 0.90).
    """
    tries = attempts if mode == "redraw" else 1
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, device=x.device, generator=generator)
    log_r = torch.log(torch.tensor(ratio, device=x.device))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(n, tries, device=x.device, generator=generator))
    w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    if mode == "clamp":
        return w[:, 0].clamp(max=1.0), h[:, 0].clamp(max=1.0)
    if mode != "redraw":
        raise ValueError(f"unknown crop mode {mode!r}; choose redraw or clamp")
    fits = (w <= 1) & (h <= 1)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # index of the first fitting draw (0 when none fits)
    found = fits.any(1)
    one = torch.ones(n, device=x.device)
    return (torch.where(found, w.gather(1, first)[:, 0], one), torch.where(found, h.gather(1, first)[:, 0], one))


def random_resized_crop_flip(x: torch.Tensor, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), generator=None,
                             mode: str = "redraw") -> torch.Tensor:
    """``RandomResizedCrop(H, scale)`` + horizontal flip p=0.5, as one bilinear resampling per batch.
    ``mode``: how a crop larger than the image is handled (see :func:`crop_sizes`)."""
    n = x.shape[0]
    w, h = crop_sizes(n, x, scale, ratio, mode, generator=generator)
    w, h = w.to(x.dtype), h.to(x.dtype)
    cx = (1 - w) * (2 * _rand(n, x, generator) - 1)  # crop centre in [-1, 1] grid units
    cy = (1 - h) * (2 * _rand(n, x, generator) - 1)
    sign = torch.where(_rand(n, x, generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_grayscale(x: torch.Tensor, p: float = 0.2, generator=None) -> torch.Tensor:
    """Replaces each image by its luminance (ITU-R 601, as torchvision) with probability ``p``."""
    if x.shape[1] != 3:
        return x
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).expand_as(x)
    pick = (_rand(x.shape[0], x, generator) < p)[:, None, None, None]
    return torch.where(pick, gray, x)


AUGMENTATIONS = {
    "none": lambda x, generator=None: x,
    "crop_flip": random_crop_flip,  # classifier training (BackdoorBox / the paper)
    "flip": lambda x, generator=None: random_crop_flip(x, padding=0, generator=generator),
    # REFINE's UNet training, as the authors' code: RandomResizedCrop (scale 0.8-1) + flip + grayscale p 0.2
    "refine": lambda x, generator=None: random_grayscale(random_resized_crop_flip(x, generator=generator),
                                                         generator=generator),
    # the same with the crop size clamped instead of redrawn (the mini preset was tuned with it)
    "refine_clamp": lambda x, generator=None: random_grayscale(
        random_resized_crop_flip(x, generator=generator, mode="clamp"), generator=generator),
}


def affine(x: torch.Tensor, degrees, scale=None, translate=None, mode: str = "bilinear") -> torch.Tensor:
    """Rotates (counter-clockwise, degrees), scales and shifts each image about its centre; uncovered pixels are 0.

    ``degrees``: a number or a tensor N; ``scale``: tensor N (1 = same size); ``translate``: tensor N×2, the shift
    (right, down) as a fraction of the side (torchvision ``RandomAffine``'s convention). One ``grid_sample`` per batch.
    """
    n = x.shape[0]
    angle = torch.as_tensor(degrees, dtype=x.dtype, device=x.device).expand(n) * (torch.pi / 180)
    scale = torch.ones(n, device=x.device, dtype=x.dtype) if scale is None else scale.to(x)
    shift = torch.zeros(n, 2, device=x.device, dtype=x.dtype) if translate is None else 2 * translate.to(x)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # the grid maps each output pixel back to its source: inverse rotation and scale of (output - shift);
    # image rows grow downwards, so a counter-clockwise turn on screen is a clockwise one in grid coordinates
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    offset = -(theta @ shift.unsqueeze(2))
    grid = F.affine_grid(torch.cat([theta, offset], 2), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def uniform(n: int, low: float, high: float, x: torch.Tensor, generator=None) -> torch.Tensor:
    """``n`` draws from U(low, high) on ``x``'s device and dtype."""
    return low + (high - low) * _rand(n, x, generator).to(x.dtype)
