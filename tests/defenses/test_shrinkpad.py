import pytest
import torch
import torch.nn.functional as F

from core.defenses.shrinkpad import ShrinkPad, shrink_pad
from core.errors import UserError


def _images(n=32, size=16, seed=0, low=0.0):
    """Float N×3×size×size in [low, 1]."""
    return low + (1 - low) * torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _zero_lines(out):
    """Per image (N): how many rows, and how many columns, are zero in every channel; and the top/left
    offset of the first non-zero row/column."""
    nonzero = out.abs().amax(1) > 0  # N×H×W
    rows, cols = nonzero.any(2), nonzero.any(1)  # N×H, N×W
    return (~rows).sum(1), (~cols).sum(1), rows.int().argmax(1), cols.int().argmax(1)


@pytest.mark.parametrize("pad", [1, 3, 7])
def test_shape_and_value_range_are_kept(pad):
    x = _images(size=16)
    for module in (ShrinkPad(pad).train(), ShrinkPad(pad).eval()):
        out = module(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1
    wide = torch.rand(4, 3, 12, 20)  # not square: H and W each lose pad_size
    assert ShrinkPad(pad)(wide).shape == wide.shape


def test_pad_size_zero_is_the_identity():
    x = _images()
    assert torch.equal(ShrinkPad(0)(x), x)


@pytest.mark.parametrize("pad", [1, 4])
def test_exactly_pad_size_zero_rows_and_columns_around_one_contiguous_image(pad):
    ones = torch.ones(64, 3, 16, 16)
    out = ShrinkPad(pad, generator=torch.Generator().manual_seed(0))(ones)
    zero_rows, zero_cols, top, left = _zero_lines(out)
    assert (zero_rows == pad).all() and (zero_cols == pad).all()
    for i in range(len(out)):  # the shrunk (all-ones) image is one block, the padding around it is zero
        block = out[i, :, top[i]:top[i] + 16 - pad, left[i]:left[i] + 16 - pad]
        assert torch.allclose(block, torch.ones_like(block), atol=1e-6)
        assert out[i].sum() == pytest.approx(block.sum().item(), rel=1e-6)


def test_offsets_are_drawn_per_image_over_the_whole_range():
    pad = 4
    out = shrink_pad(torch.ones(200, 3, 16, 16), pad, generator=torch.Generator().manual_seed(0))
    _, _, top, left = _zero_lines(out)
    # every offset 0..pad occurs on both axes (each one misses with probability (4/5)^200), and top and left
    # are drawn independently, not shared by the batch nor equal to each other
    assert set(top.tolist()) == set(range(pad + 1)) and set(left.tolist()) == set(range(pad + 1))
    assert len(set(zip(top.tolist(), left.tolist()))) >= 20  # of the 25 (top, left) pairs


@pytest.mark.parametrize("antialias", [True, False])
def test_the_shrunk_image_is_the_bilinear_resize_placed_at_the_offset(antialias):
    pad = 3
    x = _images(n=16, low=0.05)  # strictly positive pixels: the zero border tells each image's offset
    out = shrink_pad(x, pad, generator=torch.Generator().manual_seed(1), antialias=antialias)
    _, _, top, left = _zero_lines(out)
    resized = F.interpolate(x, size=(16 - pad, 16 - pad), mode="bilinear", align_corners=False, antialias=antialias)
    other = F.interpolate(x, size=(16 - pad, 16 - pad), mode="bilinear", align_corners=False,
                          antialias=not antialias)
    assert not torch.allclose(resized, other, atol=1e-3)  # the switch matters at this shrink
    for i in range(len(x)):
        placed = out[i, :, top[i]:top[i] + 16 - pad, left[i]:left[i] + 16 - pad]
        assert torch.allclose(placed, resized[i], atol=1e-6), i


MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's, as the REFINE authors normalize
STD = (0.2023, 0.1994, 0.2010)


def _fill_lines(out, fill):
    """As _zero_lines, for a border of colour ``fill`` (per channel)."""
    border = (out == torch.tensor(fill).view(1, 3, 1, 1)).all(1)  # N×H×W: pixel has the fill colour
    inside = ~border
    rows, cols = inside.any(2), inside.any(1)
    return (~rows).sum(1), (~cols).sum(1), rows.int().argmax(1), cols.int().argmax(1)


def test_mean_fill_is_backdoorbox_zero_padding_after_normalize():
    """BackdoorBox's ShrinkPad.test appends Resize((H-p, W-p)) and Pad((left, top, p-left, p-top)) (fill 0) after
    the REFINE datasets' Normalize, on tensors (torchvision 0.9: no antialias). In pixels that is: the padding
    is the normalization mean, the inside the plain bilinear shrink."""
    from torchvision.transforms import functional as TF
    pad, side = 4, 16
    x = _images(n=24, low=0.6)  # brighter than the mean: the mean-coloured border tells each image's offset
    out = shrink_pad(x, pad, generator=torch.Generator().manual_seed(2), fill=MEAN, antialias=False)
    rows, cols, top, left = _fill_lines(out, MEAN)
    assert (rows == pad).all() and (cols == pad).all()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for i in range(len(x)):
        normalized = (x[i:i + 1] - mean) / std
        shrunk = TF.resize(normalized, [side - pad, side - pad], antialias=False)
        theirs = TF.pad(shrunk, [int(left[i]), int(top[i]), pad - int(left[i]), pad - int(top[i])], fill=0)
        assert torch.allclose(out[i:i + 1], (theirs * std + mean), atol=1e-5), i
    # with black padding (the former default, BackdoorBox's unnormalized examples) the same border is zero
    black = shrink_pad(x, pad, generator=torch.Generator().manual_seed(2), antialias=False)
    assert torch.equal(_zero_lines(black)[2], top) and torch.equal(_zero_lines(black)[3], left)
    assert torch.allclose(black[out != black], torch.zeros(()), atol=0)  # only the border differs...
    assert ((out != black).flatten(1).sum(1) == 3 * (side * side - (side - pad) ** 2)).all()  # ...all of it


def test_the_defense_pads_with_the_models_mean_and_keeps_black_as_the_named_alternative():
    from core.defenses import ShrinkPadDefense
    from core.defenses.base import FitContext
    from core.defenses.parts import PARTS, spec_of
    from core.data import Split
    from core.models import build_classifier
    assert ShrinkPadDefense.version == 2
    assert ShrinkPadDefense.settings["pad_fill"].default == "mean"
    assert ShrinkPadDefense.settings["pad_antialias"].default is False
    data = Split(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ("a",), "zeros")
    quiet = FitContext(device="cpu", log=lambda message: None)
    normalized = build_classifier("ResNet18", "CIFAR10", 4, width=4, normalization="backdoorbox")
    plain = build_classifier("ResNet18", "CIFAR10", 4, width=4, normalization="none")
    cases = [({}, normalized, list(MEAN), False), ({"pad_fill": "black"}, normalized, None, False),
             ({}, plain, None, False), ({"pad_antialias": True}, normalized, list(MEAN), True)]
    for values, model, fill, antialias in cases:
        shrink = ShrinkPadDefense(pad_size=3, **values).fit(model, data, quiet).transform
        assert shrink.fill == pytest.approx(fill) if fill else shrink.fill is None, values
        assert shrink.antialias is antialias, values
        name, spec = spec_of(shrink)  # saved and rebuilt with both
        rebuilt = PARTS[name](**spec)
        assert (rebuilt.fill, rebuilt.antialias) == (shrink.fill, shrink.antialias)
    out = ShrinkPadDefense(pad_size=3).fit(normalized, data, quiet).transform(torch.ones(8, 3, 16, 16))
    padding = (out == torch.tensor(MEAN).view(1, 3, 1, 1)).all(1)  # white images: the padding is the mean colour
    assert (padding.flatten(1).sum(1) == 16 * 16 - 13 * 13).all()
    assert torch.allclose(out.permute(0, 2, 3, 1)[~padding], torch.ones(()), atol=1e-6)  # the rest is white


def test_a_deployed_shrinkpad_saved_before_the_switches_computes_as_it_did():
    # deployed files of version 1 hold {"pad_size": ...} only: black padding and an antialiased shrink
    old = ShrinkPad(**{"pad_size": 3})
    assert old.fill is None and old.antialias is True
    x = _images(n=4)
    expected = shrink_pad(x, 3, generator=torch.Generator().manual_seed(0), fill=None, antialias=True)
    assert torch.equal(old(x, generator=torch.Generator().manual_seed(0)), expected)


def test_random_in_eval_mode_and_reproducible_with_a_seeded_generator():
    x = _images()
    module = ShrinkPad(4).eval()
    assert not torch.equal(module(x), module(x)), "the defense is its randomness, eval mode included"
    first = module(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, module(x, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(first, module(x, generator=torch.Generator().manual_seed(8)))
    stored = ShrinkPad(4, generator=torch.Generator().manual_seed(7)).eval()
    assert torch.equal(stored(x), first)  # a generator given at construction is used the same way


@pytest.mark.parametrize("pad", [16, 20, -1])
def test_a_pad_size_outside_the_image_is_refused_with_the_allowed_range(pad):
    with pytest.raises(UserError, match=r"0\.\.15"):
        shrink_pad(_images(n=2), pad)
    if pad >= 0:  # the upper bound needs the images: the module checks it on its first batch
        with pytest.raises(UserError, match=r"0\.\.15 for 16×16 images, got " + str(pad)):
            ShrinkPad(pad)(_images(n=2))
    else:
        with pytest.raises(UserError, match="ShrinkPad pad size must be in 0"):
            ShrinkPad(pad)


def test_a_non_integer_pad_size_is_refused():
    with pytest.raises(UserError, match="integer"):
        ShrinkPad(2.5)
