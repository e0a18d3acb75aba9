"""ShrinkPad (Li et al., 2021, "Backdoor attack in the physical world"): a pre-processing defense.

Every input image is shrunk by ``pad_size`` pixels per side length (bilinear resize to
(H − pad_size)×(W − pad_size)) and padded back to H×W at a random position: the left and top
padding are drawn independently, uniformly in 0..pad_size, the right and bottom padding take the rest.
A trigger learned at a fixed place and scale then lands elsewhere and smaller, which breaks many
patch-type backdoors while the benign content survives. The defense is the randomness itself, so it
stays random in eval mode (pass a seeded ``torch.Generator`` for reproducible runs).

Unlike BackdoorBox's ``RandomChoice`` of pads (one offset per call, shared by the whole batch), the
offsets here are drawn per image, as in the paper's per-sample pre-processing, and the whole batch is
transformed with one ``interpolate`` and one gather on the images' device.

The padding colour (``--pad-fill``): BackdoorBox's ``ShrinkPad.test`` appends the shrink and a zero pad to the
end of the dataset's transform. The REFINE authors' datasets end with ``Normalize``, so there the zeros are in
normalized units: in pixels, the padding is the per-channel mean of the defended model's normalization
(``mean``, the default; black for a model without normalization). BackdoorBox's own ShrinkPad examples feed
unnormalized tensors, hence black padding (``black``: this toolkit's version 1). Resizing commutes with the
per-channel affine normalization (the weights sum to 1), so shrinking in pixels and padding with the mean is the
same computation. The resize is torchvision 0.9's tensor ``Resize`` (BackdoorBox's requirements): bilinear
without antialiasing (``--pad-antialias false``, the default; true: version 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import boolean, choice, integer
from ..data import Split
from ..models import Classifier
from ..settings import Setting
from .base import Defense, FitContext, defender_share, frozen_copy, register_defense
from .parts import DeployedModel, register_part

from ..errors import UserError


def check_pad_size(pad_size: int, height: int | None = None, width: int | None = None) -> None:
    """Raises :class:`UserError` unless ``pad_size`` is an int in 0..min(height, width) − 1 (0.. when no size)."""
    side = None if height is None else min(height, width if width is not None else height)
    allowed = "0..(image side − 1)" if side is None else f"0..{side - 1}"
    where = "" if side is None else f" for {height}×{width} images"
    if isinstance(pad_size, bool) or not isinstance(pad_size, int):
        raise UserError(f"ShrinkPad pad size must be an integer in {allowed}{where}, got {pad_size!r}")
    if pad_size < 0 or (side is not None and pad_size >= side):
        raise UserError(f"ShrinkPad pad size must be in {allowed}{where}, got {pad_size}")


PAD_FILLS = ("mean", "black")


def pad_colour(model: nn.Module, pad_fill: str) -> list[float] | None:
    """The padding colour in pixels that ``pad_fill`` means for ``model``: the per-channel mean of its
    normalization (``spec['mean']`` of a :class:`Classifier`) for ``mean``, None (black) for ``black`` or a
    model without normalization."""
    if pad_fill not in PAD_FILLS:
        raise UserError(f"--pad-fill must be one of {', '.join(PAD_FILLS)}, got {pad_fill!r}")
    mean = (getattr(model, "spec", None) or {}).get("mean")
    return None if pad_fill == "black" or mean is None else [float(v) for v in mean]


def shrink_pad(x: torch.Tensor, pad_size: int, generator: torch.Generator | None = None, fill=None,
               antialias: bool = True) -> torch.Tensor:
    """ShrinkPad of a batch: float N×C×H×W in [0, 1] -> float N×C×H×W in [0, 1].

    ``generator``: a ``torch.Generator`` on ``x``'s device for the offsets (None: the global RNG).
    ``fill``: the padding colour in pixels, one value per channel (None: black); ``antialias``: of the bilinear
    shrink. ``pad_size`` 0 returns ``x`` itself (no resize, no copy).
    """
    n, _, height, width = x.shape
    check_pad_size(pad_size, height, width)
    if pad_size == 0:
        return x
    # bilinear either way, a convex combination, so [0, 1] stays [0, 1]; torchvision 0.9's tensor Resize (the
    # authors') has no antialiasing, later versions antialias by default
    shrunk = F.interpolate(x, size=(height - pad_size, width - pad_size), mode="bilinear", align_corners=False,
                           antialias=antialias)
    top = torch.randint(0, pad_size + 1, (n,), device=x.device, generator=generator)
    left = torch.randint(0, pad_size + 1, (n,), device=x.device, generator=generator)
    # Gather instead of scatter: pad the shrunk image by pad_size on every side, then output pixel (r, c) of
    # image i reads padded pixel (r − top_i + pad_size, c − left_i + pad_size): the shrunk image lands at
    # (top_i, left_i) and everything around it reads the border (``fill``). One indexing op for the whole batch.
    inner_h, inner_w = shrunk.shape[2:]
    padded = shrunk.new_zeros(n, x.shape[1], inner_h + 2 * pad_size, inner_w + 2 * pad_size)
    if fill is not None:
        padded += torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    padded[:, :, pad_size:pad_size + inner_h, pad_size:pad_size + inner_w] = shrunk
    rows = (pad_size - top)[:, None] + torch.arange(height, device=x.device)  # N×H, in 0..H+pad−1
    cols = (pad_size - left)[:, None] + torch.arange(width, device=x.device)  # N×W
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    return out.clamp_(0, 1)  # resampling weights sum to 1 only up to rounding


@register_part
class ShrinkPad(nn.Module):
    """Input transform module: ``forward(x)`` = :func:`shrink_pad` (N×C×H×W, float in [0, 1] in and out).

    ``generator``: default ``torch.Generator`` for the random offsets (on the images' device); ``forward``
    may be given another one. Random in train and eval mode alike. Put it in front of a classifier with
    ``nn.Sequential(ShrinkPad(pad_size), model)``. ``fill`` (per-channel pixel values; None: black) and
    ``antialias``: see :func:`shrink_pad`; their defaults are what deployed files of version 1 (whose spec
    holds ``pad_size`` only) computed.
    """

    def __init__(self, pad_size: int, generator: torch.Generator | None = None, fill=None, antialias: bool = True):
        super().__init__()
        check_pad_size(pad_size)  # the upper bound needs the image size: checked again in forward
        self.pad_size, self.generator = pad_size, generator
        self.fill = None if fill is None else [float(v) for v in fill]
        self.antialias = bool(antialias)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return shrink_pad(x, self.pad_size, generator if generator is not None else self.generator, self.fill,
                          self.antialias)

    def extra_repr(self) -> str:
        return f"pad_size={self.pad_size}, fill={self.fill}, antialias={self.antialias}"

    part_name = "shrinkpad"  # as a part of a deployed defense (core.defenses.parts)

    def part_spec(self) -> dict:
        return {"pad_size": self.pad_size, "fill": self.fill, "antialias": self.antialias}


@register_defense
class ShrinkPadDefense(Defense):
    """ShrinkPad behind the common defense interface: no training, no data; the deployed model is
    ``model(ShrinkPad(pad_size)(x))`` with the model given (a frozen copy). Sweep ``pad_size`` for the
    trade-off of the REFINE paper's Figure 2."""

    name = "ShrinkPad"
    summary = "shrink each image by pad_size pixels and pad it back at a random offset (test time only)"
    order = 50
    aliases = ("SP",)
    version = 2  # 2: padding in the model's mean colour and no antialiasing by default (1: black, antialiased)
    settings = {"pad_size": Setting(4, "ShrinkPad: pixels each image is shrunk by and padded back (0: the identity, "
                                       "the start of a sweep)", integer(0)),
                "pad_fill": Setting("mean", "ShrinkPad: padding colour: mean (the defended model's normalization "
                                            "mean, i.e. BackdoorBox's zero padding after the REFINE datasets' "
                                            "Normalize; black for a model without one) or black (zero pixels, as "
                                            "BackdoorBox's own unnormalized examples; this toolkit's "
                                            "ShrinkPad version 1)", choice(PAD_FILLS)),
                "pad_antialias": Setting(False, "ShrinkPad: antialias the bilinear shrink (false: torchvision 0.9's "
                                                "tensor Resize, the authors'; true: this toolkit's ShrinkPad "
                                                "version 1)", boolean()),
                "data_fraction": defender_share(0.05)}

    def check(self, image_shape) -> None:
        try:
            check_pad_size(self.pad_size, *image_shape[1:])
        except UserError as exc:
            raise UserError(f"--pad-size: {exc}") from None

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        check_pad_size(self.pad_size, *data.images.shape[2:])
        shrink = ShrinkPad(self.pad_size, fill=pad_colour(model, self.pad_fill), antialias=self.pad_antialias)
        return DeployedModel(frozen_copy(model, ctx.device), shrink)
