"""Unit tests for every attack in core/attacks: determinism, which samples are touched, the trigger of each
attack (WaNet's warp, PhysicalBA's and BATT's per-batch hooks, Label-Consistent's PGD and cache,
Adaptive-Patch's four patches), rebuilding from saved triggers, aliases and the preview image."""
import math

import cv2
import numpy as np
import pytest
import torch

import core.attacks.label_consistent as lc_module
import core.attacks.physical as physical_module
from core.attacks import (ATTACKS, BATT, AdaptivePatch, BadNets, LabelConsistent, PhysicalBA, WaNet, build_attack,
                          canonical_name, restore_attack)
from core.attacks.base import CLEAN, COVER, PAYLOAD
from core.augment import affine
from core.errors import UserError
from core.settings import check_value

POISONING = [name for name in ATTACKS if name not in ("Benign", "LC")]  # LC needs a clean model: tested apart
SEEDED_TRIGGER = {"BadNets", "Blended", "WaNet", "Physical", "Adaptive"}
# Every attack except Benign, each with non-default settings so that restoring must carry them over too.
RESTORABLE = [("BadNets", {}), ("Blended", {"alpha": 0.2}), ("WaNet", {"wanet_s": 0.7, "wanet_k": 4}),
              ("Physical", {"physical_affine": "bilinear"}), ("BATT", {"batt_angle": -20.0}), ("LC", {}),
              ("Adaptive", {"patch_opacity": (0.4, 0.6, 0.3, 0.1)})]


def trigger_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def random_float_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def cover_ranks(plan, n: int) -> torch.Tensor:
    """Positions of the cover samples among the samples that are not payload."""
    rest = torch.ones(n, dtype=torch.bool)
    rest[plan.payload] = False
    return torch.searchsorted(rest.nonzero().flatten(), plan.cover)


def tiny_model() -> torch.nn.Module:
    """A 4-class linear classifier with seeded weights (the global RNG is left alone)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def centroid_angle(img: torch.Tensor) -> float:
    """Angle in degrees (counter-clockwise on screen, 0 = to the right) of the bright spot's centroid about
    the image centre; ``img`` C×S×S with one bright blob on black."""
    weight = img.sum(0)
    size = weight.shape[-1]
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                                indexing="ij")
    total = weight.double().sum()
    r = float((rows * weight).sum() / total) - (size - 1) / 2
    c = float((cols * weight).sum() / total) - (size - 1) / 2
    return math.degrees(math.atan2(-r, c))  # rows grow downwards: up on screen is a positive angle


def spot_image(n: int, size: int = 128, radius: int = 40) -> torch.Tensor:
    """n black images with a 2×2 white spot centred exactly ``radius`` pixels right of the image centre."""
    x = torch.zeros(n, 3, size, size)
    mid = size // 2
    x[:, :, mid - 1:mid + 1, mid - 1 + radius:mid + 1 + radius] = 1
    return x


# -- 1. determinism, shapes, ranges -------------------------------------------------------------------

@pytest.mark.parametrize("name", POISONING)
def test_attack_is_deterministic_for_a_seed_and_changes_with_it(synthetic, name):
    data = synthetic(400)
    a, b, other = build_attack(name, seed=3), build_attack(name, seed=3), build_attack(name, seed=4)
    (pa, plan_a), (pb, plan_b) = a.poison_train(data), b.poison_train(data)
    assert torch.equal(pa.images, pb.images) and torch.equal(pa.labels, pb.labels)
    assert torch.equal(plan_a.payload, plan_b.payload) and torch.equal(plan_a.cover, plan_b.cover)
    assert trigger_equal(a.trigger_tensors(), b.trigger_tensors())
    assert torch.equal(a.poison_test(data).images, b.poison_test(data).images)
    plan_other = other.plan(data.labels)
    assert len(set(plan_a.payload.tolist()) & set(plan_other.payload.tolist())) < len(plan_a.payload) / 2
    if len(plan_a.cover):
        # the cover draw itself follows the seed: a cover stream that ignored it would pick the same ranks among
        # the non-payload samples, i.e. nearly the same indices shifted by the payload, which overlap tests miss
        assert not torch.equal(cover_ranks(plan_a, 400), cover_ranks(plan_other, 400))
    if name in SEEDED_TRIGGER:
        assert not trigger_equal(a.trigger_tensors(), other.trigger_tensors())


@pytest.mark.parametrize("name", POISONING)
def test_poisoning_keeps_shapes_dtypes_and_value_range(synthetic, name):
    data = synthetic(400)
    attack = build_attack(name, y_target=1, seed=0)
    train, _ = attack.poison_train(data)
    assert train.images.shape == data.images.shape and train.images.dtype == torch.uint8
    assert train.labels.shape == data.labels.shape and train.labels.dtype == torch.int64
    test = attack.poison_test(data)
    assert test.images.shape == (300, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and (test.labels == 1).all()
    # float images, including the extremes all-black and all-white, stay in [0, 1] with the same shape
    x = torch.cat([random_float_images(6), torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)])
    out = attack.apply_trigger(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)  # the trigger does something


# -- 2. exactly the intended samples are touched -------------------------------------------------------

@pytest.mark.parametrize("name,settings", [("BadNets", {}), ("Blended", {}), ("WaNet", {}),
                                           ("WaNet", {"wanet_noise": True}), ("Physical", {}), ("BATT", {}),
                                           ("Adaptive", {})],
                         ids=["BadNets", "Blended", "WaNet", "WaNet-noise", "Physical", "BATT", "Adaptive"])
def test_only_the_planned_samples_are_touched(synthetic, name, settings):
    data = synthetic(400)
    attack = build_attack(name, y_target=2, seed=1, **settings)
    poisoned, plan = attack.poison_train(data)
    payload, cover = plan.payload, plan.cover
    assert torch.equal(payload, payload.sort().values) and torch.equal(cover, cover.sort().values)
    assert not set(payload.tolist()) & set(cover.tolist())
    if name == "Adaptive":
        assert len(payload) == round(0.01 * 400) and len(cover) == round(0.02 * 400)
    elif settings.get("wanet_noise"):
        assert len(payload) == 40 and len(cover) == round(2 * len(payload))
    else:
        assert len(payload) == 40 and len(cover) == 0
    untouched = torch.ones(400, dtype=torch.bool)
    untouched[payload] = untouched[cover] = False
    assert torch.equal(poisoned.images[untouched], data.images[untouched])
    assert torch.equal(poisoned.labels[untouched], data.labels[untouched])
    assert (poisoned.labels[payload] == 2).all()
    assert (data.labels[payload] != 2).any()  # some really were relabelled
    assert torch.equal(poisoned.labels[cover], data.labels[cover])
    changed = (poisoned.images != data.images).flatten(1).any(1)
    if attack.payload_in_hook:
        # BATT: payload samples are only relabelled in memory; train_hook rotates them, freshly in every batch
        assert not changed[payload].any()
        roles = plan.roles(400)
        x = poisoned.images.float() / 255
        hooked = attack.train_hook(x, roles, generator=torch.Generator().manual_seed(0))
        assert torch.equal(hooked[payload], attack.apply_trigger(x[payload]))
    else:
        assert changed[payload].all()
    if settings.get("wanet_noise"):
        # noise mode: cover samples are not warped in memory but by train_hook, freshly in every batch
        assert not changed[cover].any()
        roles = plan.roles(400)
        x = poisoned.images.float() / 255
        hooked = attack.train_hook(x, roles, generator=torch.Generator().manual_seed(0))
        moved = (hooked != x).flatten(1).any(1)
        assert moved[cover].all() and not moved[roles != COVER].any()
    else:
        assert changed[cover].all()


# -- 3. WaNet -------------------------------------------------------------------------------------------

def test_wanet_with_zero_strength_is_the_identity_and_default_warps():
    x = random_float_images(4)
    assert (WaNet(wanet_s=0).apply_trigger(x) - x).abs().max() < 1e-5
    warped = WaNet().apply_trigger(x)
    assert (warped - x).abs().max() > 0.05


def test_wanet_grid_size_defaults_to_the_image_size_and_is_recorded():
    assert WaNet().config()["wanet_k"] == 32
    small = WaNet(image_size=16)
    assert small.config()["wanet_k"] == 16 and small.field.shape == (1, 16, 16, 2)
    assert WaNet(wanet_k=4).config()["wanet_k"] == 4
    # k changes the field: a 4×4 control grid is much smoother than a 32×32 one
    rough = WaNet(seed=0).field.diff(dim=2).abs().mean()
    smooth = WaNet(seed=0, wanet_k=4).field.diff(dim=2).abs().mean()
    assert smooth < rough / 2


# -- 4. PhysicalBA ----------------------------------------------------------------------------------------

def test_physical_transformations_touch_every_training_sample():
    # every sample, poisoned or not, as BackdoorBox's PhysicalBA: transforming the poisoned ones only lets the
    # black border of the down-scaled images, not the patch, become the backdoor (measured: ASR 2 %)
    attack = PhysicalBA(seed=0)
    x = random_float_images(8)
    original = x.clone()
    roles = torch.tensor([CLEAN, PAYLOAD, COVER, PAYLOAD, CLEAN, COVER, PAYLOAD, CLEAN], dtype=torch.uint8)
    out = attack.train_hook(x, roles, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, original)  # the batch is not modified in place
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert ((out - x).abs().flatten(1).amax(1) > 0.1).all()
    again = attack.train_hook(x, torch.zeros_like(roles), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the same for any roles; the draws come from the generator only


def _physical_affine_calls(monkeypatch, mode, n=400, seed=0):
    """(output, the arguments physical_transform passed to affine) for ``n`` two-tone 32-px images."""
    calls = []

    def spy(x, degrees, scale=None, translate=None, mode="bilinear"):
        calls.append({"degrees": degrees, "scale": scale, "translate": translate, "mode": mode})
        return affine(x, degrees, scale, translate, mode)

    monkeypatch.setattr(physical_module, "affine", spy)
    tones = torch.where(random_float_images(n, seed=seed) < 0.5, 0.25, 0.75)
    out = PhysicalBA(seed=0, physical_affine=mode).train_hook(tones, torch.zeros(n, dtype=torch.uint8),
                                                                generator=torch.Generator().manual_seed(seed))
    assert len(calls) == 1
    return out, calls[0]


def test_physical_affine_nearest_is_torchvision_random_affine_and_bilinear_the_former_transform(monkeypatch):
    assert PhysicalBA.settings["physical_affine"].default == "nearest" and PhysicalBA.version == 2
    near, near_call = _physical_affine_calls(monkeypatch, "nearest")
    smooth, smooth_call = _physical_affine_calls(monkeypatch, "bilinear")
    assert near_call["mode"] == "nearest" and smooth_call["mode"] == "bilinear"
    # nearest: shifts of whole pixels, int(round(U(-3.2, 3.2))) on 32 px, every value -3..3 drawn
    pixels = near_call["translate"] * 32
    assert torch.equal(pixels, pixels.round()) and set(pixels.flatten().tolist()) == set(range(-3, 4))
    # bilinear: continuous shifts in ±0.1 of the side (hardly any draw is a whole pixel)
    smooth_pixels = smooth_call["translate"] * 32
    assert smooth_pixels.abs().max() <= 3.2 and (smooth_pixels != smooth_pixels.round()).float().mean() > 0.99
    # the same random numbers in the same order: the nearest shift is the rounded continuous one
    assert torch.equal(near_call["translate"] * 32, torch.round(smooth_call["translate"] * 32))
    assert torch.equal(near_call["degrees"], smooth_call["degrees"])
    assert torch.equal(near_call["scale"], smooth_call["scale"])
    # nearest resampling makes no new colours: each two-tone image (after its brightness factor b) holds only
    # 0.25·b, 0.75·b and the black fill; bilinear blends them into many
    for i in range(len(near)):
        values = near[i].unique()
        assert len(values) <= 3 and values.min() == 0, i
        assert torch.allclose(values[-1], 3 * values[-2], rtol=1e-5), i
    assert min(len(smooth[i].unique()) for i in range(len(smooth))) > 20


def test_nearest_affine_with_a_whole_pixel_shift_moves_the_image_exactly():
    # torchvision's tensor affine uses the same pixel-centre grid: an integer shift with no turn or scale is an
    # exact roll with the uncovered rows and columns black
    x = random_float_images(2, size=32, seed=3)
    shift = torch.tensor([[3 / 32, -2 / 32], [-1 / 32, 1 / 32]])  # (right, down) in pixels: (3, -2) and (-1, 1)
    out = affine(x, 0.0, torch.ones(2), shift, mode="nearest")
    expected = torch.zeros_like(x)
    expected[0, :, :30, 3:] = x[0, :, 2:, :29]
    expected[1, :, 1:, :31] = x[1, :, :31, 1:]
    assert torch.equal(out, expected)


def test_physical_affine_mode_is_checked():
    with pytest.raises(ValueError, match="nearest, bilinear"):
        physical_module.physical_transform(random_float_images(2), mode="bicubic")
    with pytest.raises(UserError, match="--physical-affine"):
        check_value("physical_affine", PhysicalBA.settings["physical_affine"], "bicubic")


def test_physical_test_trigger_is_the_badnets_trigger(synthetic):
    data = synthetic(40)
    physical, badnets = PhysicalBA(seed=7, y_target=3), BadNets(seed=7, y_target=3)
    assert torch.equal(physical.poison_test(data).images, badnets.poison_test(data).images)
    assert not torch.equal(physical.poison_test(data).images, BadNets(seed=8, y_target=3).poison_test(data).images)


# -- 5. BATT ----------------------------------------------------------------------------------------------

def test_batt_test_trigger_is_a_16_degree_nearest_rotation():
    x = random_float_images(3)
    attack = BATT()
    assert attack.batt_angle == 16.0
    assert torch.equal(attack.apply_trigger(x), affine(x, 16, mode="nearest"))
    assert not torch.equal(attack.apply_trigger(x), affine(x, -16, mode="nearest"))


def test_batt_rotation_is_counter_clockwise():
    # a spot to the right of the centre must move up (rows decrease) by about 16 degrees; image_size only
    # matters for uint8 poisoning, so a 128-pixel image gives a precise angle
    out = BATT().apply_trigger(spot_image(1))[0]
    assert abs(centroid_angle(spot_image(1)[0])) < 1e-9
    assert abs(centroid_angle(out) - 16) < 1.5
    rows = out.sum(0).nonzero()[:, 0]
    assert (rows < 63).all()  # above the centre row


def test_batt_hook_rotates_payload_by_the_trigger_and_clean_samples_by_at_most_the_benign_angle():
    attack = BATT()
    n = 24
    roles = torch.tensor([PAYLOAD if i % 4 == 0 else COVER if i == 1 else CLEAN for i in range(n)], dtype=torch.uint8)
    payload, clean, cover = roles == PAYLOAD, roles == CLEAN, roles == COVER
    x = spot_image(n)
    out = attack.train_hook(x, roles, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[payload], attack.apply_trigger(x[payload]))  # the trigger, exactly
    assert torch.equal(out[cover], x[cover])  # BATT has no cover samples; the hook leaves any other role alone
    # on a textured image nearest-neighbour rotation changes pixels unless the drawn angle is a small fraction
    # of a degree, as two of these U(-10, 10) draws are
    texture = random_float_images(n, size=128)
    turned = attack.train_hook(texture, roles, generator=torch.Generator().manual_seed(0))
    assert torch.equal(turned[payload], attack.apply_trigger(texture[payload]))
    assert (turned[clean] != texture[clean]).flatten(1).any(1).float().mean() > 0.8
    angles = torch.tensor([centroid_angle(img) for img in out[clean]])
    assert angles.abs().max() <= 10 + 1.5  # within ±10°, up to the nearest-neighbour rounding of a 40-px radius
    assert angles.abs().max() > 5 and angles.min() < 0 < angles.max()  # random per sample, both directions
    # the ±10° is the setting, not a constant; the trigger stays
    none = BATT(benign_rotation=0.0)
    assert none.has_train_hook  # it carries the trigger
    still = none.train_hook(x, roles, generator=torch.Generator().manual_seed(0))
    assert torch.equal(still[~payload], x[~payload]) and torch.equal(still[payload], out[payload])
    assert not BATT(benign_rotation=0.0, poisoned_rate=0.0).has_train_hook


def test_batt_trigger_reaches_the_model_after_the_flip(synthetic):
    """The training loop, as attack.py runs it with BATT, must show the model each payload image flipped (or
    not) and *then* rotated 16° counter-clockwise, like the test trigger, as the authors' code does; rotating
    first lets the flip mirror half of the payload into a clockwise rotation the test set never shows."""
    from core.data import to_float
    from core.train import train_classifier

    n, epochs = 48, 2
    data = synthetic(n)  # noisy images: none is its own mirror image
    attack = BATT(y_target=1, poisoned_rate=0.5, seed=0)
    poisoned, plan = attack.poison_train(data)
    clean = to_float(data.images[plan.payload])
    rotated, rotated_flipped = attack.apply_trigger(clean), attack.apply_trigger(clean.flip(3))
    mirrored = rotated.flip(3)  # the wrong order: rotated, then flipped (a clockwise rotation of the flip)
    assert not (rotated_flipped == mirrored).flatten(1).all(1).any()  # the two orders differ on these images

    shown = []

    class Spy(torch.nn.Module):
        """A tiny linear classifier that records every training batch it is shown."""

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 4)

        def forward(self, x):
            shown.append(x.detach().clone())
            return self.linear(x.mean((2, 3)))

    train_classifier(Spy(), poisoned, epochs=epochs, batch_size=16, lr=0.0, augment="flip", device="cpu",
                     amp=False, log=lambda m: None, **attack.hook_arguments(plan, n))
    views = torch.cat(shown)
    assert len(views) == epochs * n

    def matching(candidates):
        """bool V: whether each view the model was shown equals one of ``candidates``."""
        return (views[:, None] == candidates[None]).flatten(2).all(2).any(1)

    as_trigger, as_flipped_trigger = matching(rotated), matching(rotated_flipped)
    assert not matching(mirrored).any()
    # every payload view, once per epoch, is the counter-clockwise trigger of the image or of its mirror image
    assert int((as_trigger | as_flipped_trigger).sum()) == epochs * len(plan.payload)
    assert as_trigger.any() and as_flipped_trigger.any()  # and the flip really happened to some of them


# -- 6. Label-Consistent ----------------------------------------------------------------------------------

@pytest.mark.parametrize("quantize", ["floor", "round"])
def test_label_consistent_poisons_target_class_only_within_budget_and_caches(synthetic, tmp_path, monkeypatch,
                                                                             quantize):
    data = synthetic(48, num_classes=3)  # 3 classes of 16: the target class is not a quarter of the set
    target = (data.labels == 1).nonzero().flatten()
    # 3 steps of 4/255 overshoot ε = 8/255, so the projection onto the ε-ball is exercised (the default 1.5/255
    # step would stay inside it after 3 steps)
    attack = LabelConsistent(y_target=1, seed=0, lc_steps=3, lc_step=4.0, lc_quantize=quantize,
                             clean_model=tiny_model(), cache_dir=tmp_path)
    poisoned, plan = attack.poison_train(data)
    payload = plan.payload
    assert set(payload.tolist()) <= set(target.tolist())
    assert len(payload) == round(0.25 * len(target)) == 4 and len(plan.cover) == 0
    assert torch.equal(poisoned.labels, data.labels)  # clean-label: nothing is relabelled
    outside = torch.ones(48, dtype=torch.bool)
    outside[payload] = False
    assert torch.equal(poisoned.images[outside], data.images[outside])
    # the PGD perturbation: at most ε = 8 grey levels, outside the 3×3 trigger square, and really there
    diff = (poisoned.images[payload].int() - data.images[payload].int())
    body = torch.ones(32, 32, dtype=torch.bool)
    body[-3:, -3:] = False
    # (rounding stays on the ball's bounds; floor, the authors' truncation, may end one level below x - ε, whose
    # float32 value times 255 can fall just short of the grid point)
    assert diff[:, :, body].max() == 8 and diff[:, :, body].min() in ((-8, -9) if quantize == "floor" else (-8,))
    assert (diff[:, :, body] != 0).flatten(1).any(1).all()
    # ...and the BadNets trigger of the same seed in the bottom-right corner
    square = (BadNets(seed=0).pattern[0, -3:, -3:] * 255).round().byte()
    assert torch.equal(poisoned.images[payload][:, :, -3:, -3:], square.expand(len(payload), 3, 3, 3))

    assert len(list(tmp_path.glob("pgd_*.pth"))) == 1

    def no_pgd(*args, **kwargs):
        raise AssertionError("PGD ran again instead of reading the cache")

    monkeypatch.setattr(lc_module, "pgd_hard_to_learn", no_pgd)
    again = LabelConsistent(y_target=1, seed=0, lc_steps=3, lc_step=4.0, lc_quantize=quantize, clean_model=tiny_model(),
                            cache_dir=tmp_path)
    poisoned2, plan2 = again.poison_train(data)
    assert torch.equal(poisoned2.images, poisoned.images) and torch.equal(plan2.payload, payload)
    # a different PGD setting is a different cache entry: PGD must run (and here, fail)
    other = LabelConsistent(y_target=1, seed=0, lc_steps=4, lc_step=4.0, lc_quantize=quantize, clean_model=tiny_model(),
                            cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="PGD ran again"):
        other.poison_train(data)


def test_label_consistent_without_a_clean_model_says_so(synthetic):
    with pytest.raises(UserError, match="clean model"):
        LabelConsistent(y_target=1).poison_train(synthetic(40))


# -- 7. Adaptive-Patch -------------------------------------------------------------------------------------

def test_adaptive_training_trigger_cycles_patches_at_their_opacities():
    attack = AdaptivePatch(seed=0)
    black = torch.zeros(8, 3, 32, 32)
    out = attack.apply_train_trigger(black, torch.arange(8))
    for order, opacity in enumerate((0.5, 0.5, 0.2, 0.3, 0.5, 0.5, 0.2, 0.3)):
        k = order % 4
        assert torch.equal((out[order] != 0).any(0), attack.masks[k] > 0), order
        assert torch.allclose(out[order], opacity * attack.patches[k] * attack.masks[k], atol=1e-6)
    assert len({int(m.sum()) for m in attack.masks}) == 4  # four different patches, not one repeated


def test_adaptive_test_trigger_pastes_patterns_1_and_2_at_full_opacity():
    # Both authors' codes: REFINE's AdaptivePatch.py blends its test set with alphas [1] * 4, backdoor-toolbox's
    # config.py gives the test pictures alphas 1, 1 (not the training opacities 0.5, 0.5).
    attack = AdaptivePatch(seed=0)
    x = random_float_images(2)
    out = attack.apply_trigger(x)
    m0, m1 = attack.masks[0] > 0, attack.masks[1] > 0
    inside = m0 | m1
    assert (m0 & m1).any()  # the bottom-right mark lies on the corner patch, as in the authors' pictures
    # pattern 1 lies on top where they meet: REFINE inserts both transforms at one index, so the second runs first
    assert torch.allclose(out[:, :, m0], attack.patches[0][:, m0].expand(2, -1, -1), atol=1e-6)
    assert torch.allclose(out[:, :, m1 & ~m0], attack.patches[1][:, m1 & ~m0].expand(2, -1, -1), atol=1e-6)
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])  # patches 2 and 3 are not used at test time


def test_adaptive_generated_patches_sit_where_the_authors_pictures_put_them():
    # Read off the pictures in backdoor-toolbox's triggers/ (the same files in REFINE's adaptive_triggers/).
    masks = AdaptivePatch(seed=1).masks
    expected = torch.zeros(4, 32, 32)
    expected[0, 27:32, 27:32] = 1  # phoenix_corner_32.png: 5×5, bottom right
    for rows in (slice(0, 3), slice(29, 32)):  # badnet_patch4_32.png: four 3×3 marks in the image corners
        for cols in (slice(0, 3), slice(29, 32)):
            expected[1, rows, cols] = 1
    expected[3, 21:29, 21:29] = 1  # trojan_square_32.png: 8×8, rows and columns 21-28
    for k in (0, 1, 3):
        assert torch.equal(masks[k], expected[k]), k
    rows, cols = masks[2].nonzero().T  # firefox_corner_32.png: a round 13×13 logo, rows 1-13, columns 18-30
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 13, 18, 30)
    assert masks[2, 7, 24] == 1 and masks[2, 1, 18] == 0  # round: centre in, bounding-box corner out


def test_adaptive_generated_triggers_are_deterministic_per_seed():
    a, b, c = AdaptivePatch(seed=2), AdaptivePatch(seed=2), AdaptivePatch(seed=3)
    assert trigger_equal(a.trigger_tensors(), b.trigger_tensors())
    assert not torch.equal(a.patches, c.patches)
    assert torch.equal(a.masks, c.masks)  # the shapes and positions are fixed; the colours come from the seed


def test_adaptive_generated_patches_are_saturated_and_never_black():
    attack = AdaptivePatch(seed=4)
    for k in range(4):
        pixels = attack.patches[k][:, attack.masks[k] > 0]  # 3 × pixels of patch k
        assert ((pixels == 0) | (pixels == 1)).all(), k  # full-contrast colours, as the authors' pictures
        assert (pixels.sum(0) > 0).all(), k  # black would read as "no trigger" once saved as an image


AUTHORS_FILES = ("phoenix_corner", "badnet_patch4", "firefox_corner", "trojan_square")  # patterns 1-4


def write_patch_folder(folder, names, size=32, suffix="_32"):
    """One PNG per name, black but for a coloured 3×3 square each; returns the RGB colours and squares."""
    folder.mkdir(exist_ok=True)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50)]
    corners = [(1, 1), (5, 20), (25, 3), (28, 28)]
    for name, colour, (r, c) in zip(names, colours, corners):
        img = np.zeros((size, size, 3), dtype=np.uint8)
        img[r:r + 3, c:c + 3] = colour
        assert cv2.imwrite(str(folder / f"{name}{suffix}.png"), img[:, :, ::-1])  # cv2 writes BGR
    return colours, corners


def test_adaptive_trigger_dir_takes_the_authors_pictures_by_name_not_sorted(tmp_path):
    # Sorted by name they would be badnet, firefox, phoenix, trojan: firefox would get 0.5 and phoenix 0.2, and
    # the test trigger would be badnet + firefox instead of phoenix + badnet.
    colours, corners = write_patch_folder(tmp_path / "authors", AUTHORS_FILES)
    attack = AdaptivePatch(trigger_dir=tmp_path / "authors")
    assert attack.patches.shape == (4, 3, 32, 32) and attack.masks.shape == (4, 32, 32)
    for k, (colour, (r, c)) in enumerate(zip(colours, corners)):
        expected_mask = torch.zeros(32, 32)
        expected_mask[r:r + 3, c:c + 3] = 1
        assert torch.equal(attack.masks[k], expected_mask), AUTHORS_FILES[k]
        assert torch.allclose(attack.patches[k][:, r, c], torch.tensor(colour, dtype=torch.float32) / 255)
    trained = attack.apply_train_trigger(torch.zeros(4, 3, 32, 32), torch.arange(4))
    for k, opacity in enumerate((0.5, 0.5, 0.2, 0.3)):  # REFINE's attack.py: alphas [0.5, 0.5, 0.2, 0.3]
        r, c = corners[k]
        assert torch.allclose(trained[k, :, r, c], opacity * torch.tensor(colours[k]) / 255), AUTHORS_FILES[k]
    out = attack.apply_trigger(torch.zeros(1, 3, 32, 32))  # phoenix + badnet, at full opacity
    assert torch.allclose(out[0], attack.patches[0] + attack.patches[1])


def test_adaptive_trigger_dir_takes_the_pictures_of_the_image_size_and_ignores_others(tmp_path):
    folder = tmp_path / "two"  # REFINE's adaptive_triggers/ holds each picture at 32 and 224 pixels
    colours, corners = write_patch_folder(folder, AUTHORS_FILES, size=64, suffix="_64")
    write_patch_folder(folder, AUTHORS_FILES[::-1], size=32)
    write_patch_folder(folder, ["phoenix_corner2", "mask_badnet_patch4"], size=64, suffix="_64")  # backdoor-toolbox
    (folder / "notes.txt").write_text("not an image")
    attack = AdaptivePatch(trigger_dir=folder, image_size=64)
    for k, (colour, (r, c)) in enumerate(zip(colours, corners)):
        assert int(attack.masks[k].sum()) == 9 and attack.masks[k][r:r + 3, c:c + 3].all(), AUTHORS_FILES[k]
        assert torch.allclose(attack.patches[k][:, r, c], torch.tensor(colour, dtype=torch.float32) / 255)
    with pytest.raises(UserError, match="2 phoenix_corner pictures .*none for 48×48"):
        AdaptivePatch(trigger_dir=folder, image_size=48)


@pytest.mark.parametrize("names", [AUTHORS_FILES[:3], ("0", "1", "2", "3")], ids=["three", "other-names"])
def test_adaptive_trigger_dir_without_the_authors_names_is_refused(tmp_path, names):
    write_patch_folder(tmp_path / "pictures", names, suffix="")
    missing = "trojan_square" if names == AUTHORS_FILES[:3] else "phoenix_corner"
    with pytest.raises(UserError, match=f"no {missing} picture in .*--trigger-dir takes the authors' four pictures "
                                        "by name: phoenix_corner, badnet_patch4, firefox_corner, trojan_square"):
        AdaptivePatch(trigger_dir=tmp_path / "pictures")


# -- 8. saved triggers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,settings", RESTORABLE, ids=[name for name, _ in RESTORABLE])
def test_saved_trigger_rebuilds_the_same_attack(synthetic, name, settings):
    data = synthetic(40, seed=5)
    attack = build_attack(name, y_target=2, seed=3, **settings)
    restored = restore_attack(attack.config(), attack.trigger_tensors())
    assert type(restored) is type(attack)
    assert restored.config() == attack.config()
    assert torch.equal(restored.poison_test(data).images, attack.poison_test(data).images)
    assert torch.equal(restored.poison_test(data).labels, attack.poison_test(data).labels)
    if name in ("Blended", "WaNet", "BATT"):  # these settings shape the test trigger: they must have been used
        assert not torch.equal(restored.poison_test(data).images, build_attack(name, y_target=2, seed=3)
                               .poison_test(data).images)


def test_restored_trigger_comes_from_the_tensors_not_the_seed(synthetic):
    data = synthetic(40, seed=5)
    attack = BadNets(y_target=2, seed=3)
    config = {**attack.config(), "seed": 99}
    restored = restore_attack(config, attack.trigger_tensors())
    assert torch.equal(restored.poison_test(data).images, attack.poison_test(data).images)
    # ...whereas the seed alone would give another trigger
    assert not torch.equal(restore_attack(config, None).poison_test(data).images, attack.poison_test(data).images)


# -- 9. aliases --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alias,name,cls", [("PhysicalBA", "Physical", PhysicalBA),
                                            ("LabelConsistent", "LC", LabelConsistent),
                                            ("AdaptivePatch", "Adaptive", AdaptivePatch)])
def test_aliases_build_the_same_attack_classes(alias, name, cls):
    assert canonical_name(alias) == name and canonical_name(name) == name
    assert type(build_attack(alias)) is cls and type(build_attack(name)) is cls
    assert build_attack(alias).config()["attack"] == name  # a run records the registry name, not the alias
    assert canonical_name("Physical-BA") is None


# -- 10. preview --------------------------------------------------------------------------------------------

def test_save_preview_writes_a_four_row_grid(synthetic, tmp_path):
    test = synthetic(20)  # 4 classes, 2 images of each shown: 8 columns
    path = BadNets(seed=0).save_preview(test, tmp_path / "p.png")
    assert path == tmp_path / "p.png"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None
    up = 96 // 32  # each pixel drawn 3×3
    assert img.shape == (4 * 32 * up, 8 * 32 * up, 3)
    # row 0 is the clean first image, upscaled; the last row is mid-grey where the test trigger changed nothing
    first = test.images[0].permute(1, 2, 0).numpy()[:, :, ::-1]
    assert np.array_equal(img[:32 * up:up, :32 * up:up], first)
    assert (img[3 * 32 * up:3 * 32 * up + 10, :] == 128).all()


def test_label_consistent_pgd_ascends_the_clean_models_loss(synthetic):
    """PGD makes the poisoned images hard to learn: the clean model's loss on their true labels goes up."""
    import torch.nn.functional as F
    from core.data import to_float

    data, model = synthetic(16, num_classes=3), tiny_model()
    adv = lc_module.pgd_hard_to_learn(model, data.images, data.labels, 8 / 255, 2 / 255, 5, progress=False)
    with torch.no_grad():
        before = F.cross_entropy(model(to_float(data.images)), data.labels)
        after = F.cross_entropy(model(to_float(adv)), data.labels)
    assert after > before + 1e-3, (before, after)
