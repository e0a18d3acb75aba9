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


def test_the_shrunk_image_is_the_bilinear_resize_placed_at_the_offset():
    pad = 3
    x = _images(n=16, low=0.05)  # strictly positive pixels: the zero border tells each image's offset
    out = shrink_pad(x, pad, generator=torch.Generator().manual_seed(1))
    _, _, top, left = _zero_lines(out)
    resized = F.interpolate(x, size=(16 - pad, 16 - pad), mode="bilinear", align_corners=False, antialias=True)
    for i in range(len(x)):
        placed = out[i, :, top[i]:top[i] + 16 - pad, left[i]:left[i] + 16 - pad]
        assert torch.allclose(placed, resized[i], atol=1e-6), i


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
