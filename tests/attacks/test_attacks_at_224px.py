"""Every attack of the registry (and Benign) at ImageNet size, 224×224, on a few synthetic images, in well under
a second each: the trigger is built for 224-pixel images, poison_train/poison_test keep shapes, dtype, range and
the labels right, the trigger changes the images where it should (BadNets' 20×20 patch at the bottom right, ...),
the training trigger and per-batch hook work at that size, the trigger saved in a run rebuilds the same poisoned
test set, the preview is drawn, and nothing is done per sample (the number of torch calls does not grow with
the number of images). The whole attack.py -> refine.py -> --eval path at 224 px runs once, for one attack, in
test_imagenet50_e2e.py."""
import cv2
import pytest
import torch

from conftest import make_synthetic
from core.attacks import ATTACKS, attack_class, restore_attack
from core.attacks.base import CLEAN, PAYLOAD
from core.data import Split, to_float
from core.train import train_classifier

SIZE = 224
TARGET = 1  # not 0: a label left at 0 by mistake must not pass for the target
N, CLASSES = 40, 4  # 10 images per class
RATE = 0.25  # of the training set (LC: of the target class): 10 payload images, 2 for LC
PATCH = 20  # the BadNets patch side on ImageNet-size images (3 on 32×32 ones)
NAMES = list(ATTACKS)  # registry names, whether ATTACKS is a dict or a registry object


def tiny_clean_model() -> torch.nn.Module:
    """LC's clean model: any classifier of 224-pixel images will do for its PGD; seeded, the global RNG untouched."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, CLASSES))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def build(name, tmp_path):
    """The attack ``name`` for 224-pixel images, with enough payload and cover samples among N images (LC: two
    PGD steps of 6/255 overshoot ε = 8/255, so that the projection onto the ε-ball matters)."""
    extra = {"LC": dict(clean_model=tiny_clean_model(), cache_dir=tmp_path / "pgd", lc_steps=2, lc_step=6.0),
             "Adaptive": dict(cover_rate=0.1)}.get(name, {})
    return attack_class(name)(y_target=TARGET, poisoned_rate=RATE, seed=0, image_size=SIZE, **extra)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(N, num_classes=CLASSES, size=SIZE, seed=0)


class CountTorchCalls(torch.overrides.TorchFunctionMode):
    """Counts the torch functions and tensor methods called (one level: not those inside them)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def torch_calls(fn, *args) -> int:
    with CountTorchCalls() as counter:
        fn(*args)
    return counter.calls


def changed_pixels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """N×H×W bool: the pixels where any channel differs."""
    return (a != b).any(1)


# -- where each attack's test trigger (and training trigger) goes, at 224 px ----------------------------------
def check_badnets_patch(attack, clean, poisoned):
    assert attack.weight.shape == (SIZE, SIZE) and int(attack.weight.sum()) == PATCH * PATCH  # 20×20, not 3×3
    corner = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    corner[-PATCH:, -PATCH:] = True
    assert not changed_pixels(clean, poisoned)[:, ~corner].any(), "pixels outside the 20×20 corner changed"
    grey = (attack.pattern[0, -PATCH:, -PATCH:] * 255).round().byte()  # the same grey level on every channel
    assert torch.equal(poisoned[:, :, -PATCH:, -PATCH:], grey.expand(len(poisoned), 3, PATCH, PATCH))


def check_blended(attack, clean, poisoned):
    assert attack.pattern.shape == (3, SIZE, SIZE)
    expected = ((1 - attack.alpha) * to_float(clean) + attack.alpha * attack.pattern) * 255
    assert (poisoned.float() - expected).abs().max() <= 0.5 + 1e-3  # the blend, rounded to 8 bits
    assert changed_pixels(clean, poisoned).float().mean() > 0.9  # over the whole image


def check_wanet(attack, clean, poisoned):
    assert attack.field.shape == (1, SIZE, SIZE, 2) and attack.config()["wanet_k"] == SIZE
    moved = changed_pixels(clean, poisoned)
    for rows in (slice(0, SIZE // 2), slice(SIZE // 2, SIZE)):  # a warp of the whole image: every quadrant
        for cols in (slice(0, SIZE // 2), slice(SIZE // 2, SIZE)):
            assert moved[:, rows, cols].float().mean() > 0.3
    assert (poisoned.float() - clean.float()).abs().mean() < 8  # a fraction of a pixel: imperceptible


def check_batt(attack, clean, poisoned):
    assert attack.batt_angle == 16.0
    corners = torch.zeros(SIZE, SIZE, dtype=torch.bool)  # uncovered by a 16° rotation about the centre
    for rows in (slice(0, 12), slice(-12, None)):
        for cols in (slice(0, 12), slice(-12, None)):
            corners[rows, cols] = True
    assert (poisoned[:, :, corners] == 0).all() and (clean[:, :, corners] > 0).any()
    assert changed_pixels(clean, poisoned).float().mean() > 0.5  # the whole image turns


def check_adaptive(attack, clean, poisoned):
    scale = SIZE // 32  # the 32-pixel layout, enlarged 7×: the corner patch is 35×35, bottom right
    assert attack.patches.shape == (4, 3, SIZE, SIZE) and attack.masks.shape == (4, SIZE, SIZE)
    assert int(attack.masks[0].sum()) == (5 * scale) ** 2 and attack.masks[0][-5 * scale:, -5 * scale:].all()
    assert int(attack.masks[1].sum()) == 4 * (3 * scale) ** 2 and attack.masks[1][:3 * scale, :3 * scale].all()
    inside = (attack.masks[0] + attack.masks[1]) > 0  # the test trigger: patches 0 and 1 at full opacity
    moved = changed_pixels(clean, poisoned)
    assert not moved[:, ~inside].any() and moved[:, inside].float().mean() > 0.9
    # the training trigger cycles through the four patches, each blended where its own mask is
    x = clean[:4]
    trained = attack.poison_uint8(x, order=torch.arange(4))
    for k in range(4):
        assert not changed_pixels(x[k:k + 1], trained[k:k + 1])[0][attack.masks[k] == 0].any(), k
        assert changed_pixels(x[k:k + 1], trained[k:k + 1])[0][attack.masks[k] > 0].float().mean() > 0.5, k


TEST_TRIGGER = {"BadNets": check_badnets_patch, "Physical": check_badnets_patch, "LC": check_badnets_patch,
                "Blended": check_blended, "WaNet": check_wanet, "BATT": check_batt, "Adaptive": check_adaptive}


def check_hook(name, attack, images, roles):
    """The per-batch hook at 224 px: shape, dtype, range, the input left alone, and the right samples moved."""
    x = to_float(images)
    original = x.clone()
    out = attack.train_hook(x, roles, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, original), "the hook changed its input batch in place"
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    moved = (out != x).flatten(1).any(1)
    if name == "Physical":  # every sample, poisoned or not
        assert moved.all()
    elif name == "BATT":  # the trigger on the payload samples, benign rotations of the clean ones
        payload = roles == PAYLOAD
        assert torch.equal(out[payload], attack.apply_trigger(x[payload]))
        assert not moved[(roles != CLEAN) & ~payload].any() and moved[roles == CLEAN].float().mean() > 0.8
    else:
        raise AssertionError(f"{name} has a per-batch hook this test does not know: add what it should do")
    # ...and inside the training loop, as attack.py passes it: every sample once per epoch, with its role
    seen = []

    def spy(batch, batch_roles, generator=None):
        seen.append((batch.shape[1:], batch.dtype, batch_roles.clone()))
        return attack.train_hook(batch, batch_roles, generator=generator)

    train_classifier(tiny_clean_model().train(), Split(images, torch.arange(len(images)) % CLASSES, (), "x"),
                     epochs=1, batch_size=len(images) // 2, lr=0.01, augment="flip", device="cpu", roles=roles,
                     batch_hook=spy, hook_after_augment=attack.hook_after_augment, log=lambda m: None)
    assert len(seen) == 2 and all(shape == (3, SIZE, SIZE) and dtype == torch.float32 for shape, dtype, _ in seen)
    assert torch.equal(torch.cat([r for _, _, r in seen]).sort().values, roles.sort().values)


@pytest.mark.parametrize("name", NAMES)
def test_attack_poisons_224_pixel_images(name, data, tmp_path):
    attack = build(name, tmp_path)
    assert attack.image_size == SIZE and attack.config()["image_size"] == SIZE
    poisoned, plan = attack.poison_train(data)
    assert poisoned.images.shape == (N, 3, SIZE, SIZE) and poisoned.images.dtype == torch.uint8
    assert poisoned.labels.shape == (N,) and poisoned.labels.dtype == torch.int64
    touched = torch.zeros(N, dtype=torch.bool)
    touched[plan.touched()] = True
    assert torch.equal(poisoned.images[~touched], data.images[~touched])
    assert torch.equal(poisoned.labels[~touched], data.labels[~touched])
    if name == "Benign":
        assert not attack.poisons_data and not touched.any() and attack.trigger_tensors() == {}
        return
    payload = plan.payload
    if name == "LC":  # clean-label: a share of the target class, labels kept
        assert len(payload) == round(RATE * N / CLASSES) > 0 and (data.labels[payload] == TARGET).all()
        assert torch.equal(poisoned.labels, data.labels)
        diff = poisoned.images[payload].int() - data.images[payload].int()
        # PGD within ε, really there, above the patch; the default floor quantization (the authors' truncation) may
        # end one level below x - ε, whose float32 value times 255 can fall just short of the grid point
        below = attack.lc_eps + (attack.lc_quantize == "floor")
        assert -below <= diff[:, :, :-PATCH].min() and diff[:, :, :-PATCH].max() <= attack.lc_eps
        assert (diff[:, :, :-PATCH] != 0).flatten(1).any(1).all()
    else:
        assert len(payload) == round(RATE * N) and (poisoned.labels[payload] == TARGET).all()
        assert (data.labels[payload] != TARGET).any()  # some really were relabelled
    if name == "Adaptive":
        assert len(plan.cover) == round(0.1 * N)
    assert torch.equal(poisoned.labels[plan.cover], data.labels[plan.cover])
    in_memory = touched.clone()  # BATT's payload is rotated by its hook, after the flip, not in memory
    in_memory[payload] = not attack.payload_in_hook
    assert (poisoned.images[in_memory] != data.images[in_memory]).flatten(1).any(1).all()
    assert torch.equal(poisoned.images[touched & ~in_memory], data.images[touched & ~in_memory])

    test = attack.poison_test(data)
    keep = data.labels != TARGET
    assert test.images.shape == (int(keep.sum()), 3, SIZE, SIZE) and test.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and (test.labels == TARGET).all()  # ASR counts the non-target images
    assert name in TEST_TRIGGER, f"say where the {name} trigger goes (TEST_TRIGGER)"
    TEST_TRIGGER[name](attack, data.images[keep], test.images)
    x = torch.cat([to_float(data.images[:2]), torch.zeros(1, 3, SIZE, SIZE), torch.ones(1, 3, SIZE, SIZE)])
    out = attack.apply_trigger(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1

    if attack.has_train_hook:
        roles = plan.roles(N)
        assert {int(r) for r in roles.unique()} >= {CLEAN, PAYLOAD}
        check_hook(name, attack, poisoned.images, roles)

    # what a run saves: the trigger (model.pth holds the same tensors) and the preview
    written = attack.save_trigger(tmp_path / "run")
    assert all(p.is_file() for p in written)
    saved = {}  # BATT's trigger is its settings alone
    if attack.trigger_tensors():
        assert tmp_path / "run" / "trigger.pth" in written
        saved = torch.load(tmp_path / "run" / "trigger.pth", weights_only=True)
        assert saved.keys() == attack.trigger_tensors().keys()
    torch.save({"attack": attack.config(), "trigger": saved}, tmp_path / "meta.pth")
    meta = torch.load(tmp_path / "meta.pth", weights_only=True)  # as model.pth's meta reaches refine.py
    restored = restore_attack(meta["attack"], meta["trigger"], image_size=SIZE)  # as refine.py rebuilds the test set
    assert type(restored) is type(attack)
    assert torch.equal(restored.poison_test(data).images, test.images)
    preview = cv2.imread(str(attack.save_preview(data, tmp_path / "run" / "preview.png")), cv2.IMREAD_COLOR)
    assert preview.shape == (4 * SIZE, 2 * CLASSES * SIZE, 3)  # rows: clean, train, test trigger, difference


@pytest.mark.parametrize("name", NAMES)
def test_nothing_is_done_per_sample(name, data, tmp_path):
    # A per-image Python loop makes the number of torch calls grow with the images; batched code issues the
    # same calls for 10 images as for 40 (LC: the same PGD steps, one batch).
    small = data.subset(torch.arange(N // 4))
    attack = build(name, tmp_path)
    assert torch_calls(attack.poison_train, data) == torch_calls(attack.poison_train, small)
    assert torch_calls(attack.poison_test, data) == torch_calls(attack.poison_test, small)
    x = to_float(data.images)
    assert torch_calls(attack.apply_train_trigger, x, torch.arange(N)) == \
        torch_calls(attack.apply_train_trigger, x[:4], torch.arange(4))
    if attack.has_train_hook:
        roles = attack.poison_train(data)[1].roles(N)

        def hook(n):
            return torch_calls(lambda: attack.train_hook(x[:n], roles[:n], generator=torch.Generator()))

        assert hook(N) == hook(4)
