import pytest
import torch

from core.attacks import ATTACKS, BadNets, Blended, build_attack
from core.errors import UserError


def test_badnets_pastes_the_pattern_exactly_in_the_bottom_right_corner(synthetic):
    data = synthetic(8)
    attack = BadNets(image_size=32, seed=3)
    poisoned = attack.poison_uint8(data.images)
    pattern = (attack.trigger_tensors()["pattern"] * 255).round().byte()  # 1×32×32, zero outside the square
    assert torch.equal(poisoned[:, :, -3:, -3:], pattern[:, -3:, -3:].expand(8, 3, 3, 3))  # same grey on all channels
    assert torch.equal(poisoned[:, :, :-3, :], data.images[:, :, :-3, :])
    assert torch.equal(poisoned[:, :, -3:, :-3], data.images[:, :, -3:, :-3])
    assert pattern[:, -3:, -3:].float().std() > 0  # random grey levels, not a constant square


def test_badnets_imagenet_square_is_20_by_20():
    attack = BadNets(image_size=224)
    assert int(attack.weight.sum()) == 400 and attack.weight[-20:, -20:].all()


def test_badnets_accepts_the_authors_pattern_file_including_zero_grey_levels(tmp_path):
    pattern = torch.zeros(32, 32, dtype=torch.uint8)
    pattern[-3:, -3:] = torch.tensor([[10, 0, 200], [255, 30, 40], [50, 60, 70]], dtype=torch.uint8)
    torch.save(pattern, tmp_path / "trigger.pth")
    attack = BadNets(image_size=32, trigger_path=tmp_path / "trigger.pth")
    x = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    out = attack.poison_uint8(x)
    assert torch.equal(out[0, 1, -3:, -3:], pattern[-3:, -3:])  # the 0 inside the square is pasted too
    assert (out[0, :, :-3] == 128).all()


def test_blended_is_the_rounded_convex_mix(synthetic):
    data = synthetic(6)
    attack = Blended(image_size=32, alpha=0.1, seed=1)
    out = attack.poison_uint8(data.images).float()
    expected = (0.9 * data.images.float() / 255 + 0.1 * attack.pattern) * 255
    assert (out - expected.round()).abs().max() <= 1  # float rounding at .5 may differ by one level
    assert (out - expected).abs().max() <= 0.5 + 1e-3


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 1.0])
def test_poisoned_rate_is_exact_and_only_those_samples_change(synthetic, rate):
    data = synthetic(200)
    attack = BadNets(y_target=2, poisoned_rate=rate, seed=5)
    poisoned, plan = attack.poison_train(data)
    idx = plan.payload
    assert len(plan.cover) == 0
    assert len(idx) == round(rate * 200) and len(set(idx.tolist())) == len(idx)
    changed_labels = (poisoned.labels != data.labels).nonzero().flatten()
    assert set(changed_labels.tolist()) <= set(idx.tolist())
    assert (poisoned.labels[idx] == 2).all()
    clean = torch.ones(200, dtype=torch.bool)
    clean[idx] = False
    assert torch.equal(poisoned.images[clean], data.images[clean])


@pytest.mark.parametrize("attack", [BadNets(y_target=2, image_size=32, seed=1), Blended(y_target=3, image_size=32)],
                         ids=["BadNets", "Blended"])
def test_poisoned_test_set_is_exactly_the_triggered_non_target_images(synthetic, attack):
    # y_target != 0, and which images are kept is checked, not only how many: dropping another class
    # (say y_target + 1) instead of the target's, or reordering, fails
    test = synthetic(40, num_classes=4, seed=7)
    keep = [i for i in range(40) if test.labels[i] != attack.y_target]
    poisoned = attack.poison_test(test)
    assert len(keep) == 30
    assert torch.equal(poisoned.images, attack.poison_uint8(test.images[keep]))
    assert poisoned.labels.dtype == torch.int64 and torch.equal(poisoned.labels, torch.full((30,), attack.y_target))
    assert not torch.equal(poisoned.images, test.images[keep])  # the trigger is on them
    assert torch.equal(test.labels, torch.arange(40) % 4)  # the clean test set is left as it was


def test_poisoned_indices_do_not_coincide_with_the_first_shuffled_batch(synthetic):
    # Regression: with one shared seed, epoch 0 began with nothing but poisoned samples.
    from core.seeding import generator

    data = synthetic(1000)
    idx = set(BadNets(poisoned_rate=0.1, seed=0).poison_train(data)[1].payload.tolist())
    first_batch = torch.randperm(1000, generator=generator(0, "shuffle", 0))[:100].tolist()
    assert len(idx & set(first_batch)) < 40


def test_unknown_attack_and_wrong_image_size_give_clear_errors(synthetic):
    with pytest.raises(UserError, match="unknown attack 'Nope'.*BadNets"):
        build_attack("Nope")
    with pytest.raises(UserError, match="WaNet takes no trigger file"):
        build_attack("WaNet", trigger_path="t.png")
    with pytest.raises(UserError, match="alpha is not a setting of BadNets"):
        build_attack("BadNets", alpha=0.2)
    with pytest.raises(UserError, match="32x32"):
        BadNets(image_size=32).poison_uint8(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


def test_refine_rebuilds_the_poisoned_test_set_from_the_saved_trigger_not_the_seed(synthetic):
    from core.run_defense import poisoned_testset

    test = synthetic(20)
    attack = BadNets(y_target=1, seed=0)
    saved = {"attack": {**attack.config(), "seed": 99}, "trigger": attack.trigger_tensors()}  # seed disagrees
    config = {"attack": "BadNets", "tlabel": None, "trigger": None}
    poisoned, attack_config, tensors = poisoned_testset(config, saved, test, 32)
    assert torch.equal(poisoned.images, attack.poison_test(test).images)
    assert torch.equal(tensors["pattern"], attack.pattern)
    # without saved tensors (a checkpoint of an older version) the seed rebuilds another trigger: the check can fail
    rebuilt, _, _ = poisoned_testset(config, {"attack": saved["attack"]}, test, 32)
    assert not torch.equal(rebuilt.images, poisoned.images)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_the_loop_calls_every_hook_that_changes_a_batch(synthetic, name):
    """An attack whose per-batch hook changes the training batch must say so (``has_train_hook``), or the training
    loop never calls it: e.g. PhysicalBA's transformations would silently not happen."""
    from core.attacks.base import CLEAN, COVER, PAYLOAD
    from core.data import to_float

    settings = {"wanet_noise": True} if name == "WaNet" else {}
    attack = build_attack(name, image_size=16, **settings)
    x = to_float(synthetic(12, size=16).images)
    roles = torch.tensor([CLEAN, PAYLOAD, COVER] * 4, dtype=torch.uint8)
    changed = not torch.equal(attack.train_hook(x.clone(), roles, generator=torch.Generator().manual_seed(0)), x)
    assert attack.has_train_hook == changed, name
