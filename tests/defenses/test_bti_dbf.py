"""BTI-DBF (core/defenses/bti_dbf.py) on tiny problems: 16×16 synthetic images, width-8 ResNet-18, 4 classes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import TOY_TARGET, make_synthetic
from core.defenses.bti_dbf import (BTIDBFConfig, GeneratorUNet, Purifier, bti_dbf_purify, bti_dbf_unlearn,
                                   build_generator, decouple_mask, decoupling_loss, detect_target, feature_shape,
                                   features, head, inversion_loss, invert_trigger, mask_from_logits, mix_count,
                                   pretrain_loss, purification_loss, train_generator, unlearning_loss)
import core.defenses.bti_dbf as bti_dbf_module
from core.defenses.bti_dbf import _mix
from core.errors import UserError
from core.models import Classifier, build_classifier

TARGET = TOY_TARGET  # not 0, so that a vote that falls back to the first class cannot pass by accident


def _defender_data(n=64):
    return make_synthetic(n, seed=3, size=16)  # the defender's small labelled benign set


def _tiny_cfg(**overrides):
    settings = dict(batch_size=32, mask_epochs=1, pretrain_epochs=1, inversion_epochs=1, generator_channels=4,
                    generator_blocks=3, rounds=2, unlearn_epochs=1, purify_epochs=1)
    return BTIDBFConfig(**{**settings, **overrides})


def _snapshot(model):
    """Everything a defense must leave alone: weights, BatchNorm buffers, modes and requires_grad flags."""
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def _assert_unchanged(model, snapshot, who):
    state, modes, grads = snapshot
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{who} changed the given model's {k}"
    assert [m.training for m in model.modules()] == modes, f"{who} changed the given model's train/eval modes"
    assert [p.requires_grad for p in model.parameters()] == grads, f"{who} changed requires_grad"


def _quiet(msg):
    pass


# -- the feature/head split -----------------------------------------------------------------------------
def test_head_of_features_is_the_model_and_a_network_without_the_split_is_refused():
    # every network of core.models has the split (tests/test_models.py runs the whole defense on each)
    for name, width, shape in (("ResNet18", 8, (64, 2, 2)), ("ResNet50", 4, (128, 2, 2)),
                               ("DenseNet121", 4, (128, 2, 2))):
        torch.manual_seed(0)
        model = build_classifier(name, "CIFAR10", 4, width=width).eval()
        x = torch.rand(3, 3, 16, 16)
        xn = model.normalize(x)
        feats = features(model, xn)
        assert feats.shape[1:] == feature_shape(model, (3, 16, 16)) == shape  # 1/8 of the side
        with torch.no_grad():
            assert torch.equal(head(model, feats), model(x)), name
    plain = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4)), {"model": "MLP"})
    with pytest.raises(UserError, match="forward_features and net.forward_head.*got MLP"):
        features(plain, torch.rand(1, 3, 16, 16))
    with pytest.raises(UserError, match="backbone/head split"):
        bti_dbf_unlearn(plain, _defender_data(8), _tiny_cfg(), log=_quiet)


def test_generator_keeps_the_shape_and_refuses_too_small_images():
    torch.manual_seed(0)
    gen = GeneratorUNet(4, blocks=3)
    for side in (16, 20, 24):  # 20: not a multiple of 2^3, padded back at each skip connection
        assert gen(torch.randn(2, 3, side, side)).shape == (2, 3, side, side)
    with pytest.raises(UserError, match="at least 16×16"):
        gen(torch.randn(1, 3, 8, 8))


# -- (a) decoupling benign features -----------------------------------------------------------------------
def _full_batch_decoupling_loss(model, mask, data):
    """CE(h(m⊙f_b(x)), y) − CE(h((1−m)⊙f_b(x)), y) over ``data``, computed here, not by the module."""
    x = data.images.float() / 255
    with torch.no_grad():
        feats = features(model, model.normalize(x))
        kept = F.cross_entropy(model.net.linear(feats.mul(mask).mean((2, 3))), data.labels)
        removed = F.cross_entropy(model.net.linear(feats.mul(1 - mask).mean((2, 3))), data.labels)
        expected = (kept - removed).item()
        assert decoupling_loss(model, mask, feats, data.labels)[0].item() == pytest.approx(expected, rel=1e-5)
        return expected


def test_mask_stays_in_the_unit_interval_and_learning_it_lowers_the_decoupling_loss(toy_backdoor):
    model = toy_backdoor.model
    data = _defender_data()
    snapshot = _snapshot(model)
    shape = feature_shape(model, (3, 16, 16))
    assert mask_from_logits(torch.tensor([-1e4, -1.0, 0.0, 1e4])).tolist() == pytest.approx([0.0, 0.1192, 0.5, 1.0],
                                                                                            abs=1e-4)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    before = _full_batch_decoupling_loss(model, mask_from_logits(init), data)
    cfg = _tiny_cfg(mask_epochs=3, batch_size=16, augment=False)  # 12 Adam steps
    mask = decouple_mask(model, data, cfg, init_logits=init, log=_quiet)
    after = _full_batch_decoupling_loss(model, mask, data)
    assert mask.shape == shape and not mask.requires_grad
    assert mask.min() >= 0 and mask.max() <= 1
    assert after < before - 0.01, (before, after)
    _assert_unchanged(model, snapshot, "decouple_mask")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mask_learning_leaves_the_given_model_alone_even_in_training_mode(toy_backdoor, mode):
    # "train" (the authors'): the mask is learned on a deep copy in training mode; "eval": on the model frozen
    model = toy_backdoor.model
    model.train()
    try:
        snapshot = _snapshot(model)
        decouple_mask(model, _defender_data(32), _tiny_cfg(mask_model_mode=mode), log=_quiet)
        _assert_unchanged(model, snapshot, "decouple_mask")
    finally:
        model.eval()


def _bn_stats(model):
    return {k: v.clone() for k, v in model.named_buffers()}  # BatchNorm's running statistics and step counts


def _same_stats(a, b):
    return all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_mask_model_drifts_only_in_the_authors_mode_and_the_inversion_reads_it(toy_backdoor, monkeypatch, mode):
    # The authors' reverse(): the mask is learned on a deep copy in training mode (BatchNorm running statistics
    # drift over the defender's images) and that copy, in eval mode, is the model of the inversion; the identity
    # pre-training and the vote read the model itself. "eval" (ours): everything reads the model frozen.
    model = toy_backdoor.model
    snapshot, given = _snapshot(model), _bn_stats(model)
    cfg = _tiny_cfg(mask_model_mode=mode, rounds=1)
    mask, net = bti_dbf_module._decouple(model, _defender_data(32), cfg, log=_quiet)
    assert mask.shape == feature_shape(model, (3, 16, 16))
    _assert_unchanged(model, snapshot, "the mask phase")
    if mode == "train":
        assert net is not model and not net.training
        assert not _same_stats(_bn_stats(net), given), "training mode must move the copy's running statistics"
        assert all(torch.equal(v, p) for v, p in zip(net.parameters(), model.parameters())), "no weight is trained"
    else:
        assert net is model and _same_stats(_bn_stats(net), given)

    seen = {}
    for name in ("pretrain_generator", "train_generator", "detect_target"):
        def spy(m, *args, _name=name, _real=getattr(bti_dbf_module, name), **kwargs):
            seen[_name] = _same_stats(_bn_stats(m), given)
            return _real(m, *args, **kwargs)
        monkeypatch.setattr(bti_dbf_module, name, spy)
    bti_dbf_unlearn(model, _defender_data(32), cfg, device="cpu", log=_quiet)
    _assert_unchanged(model, snapshot, "bti_dbf_unlearn")
    # the given model's statistics: True; the drifted copy's: False
    assert seen == {"pretrain_generator": True, "train_generator": mode == "eval", "detect_target": True}, seen


def test_mask_is_deterministic_for_a_seed(toy_backdoor):
    model = toy_backdoor.model
    data, cfg = _defender_data(32), _tiny_cfg()
    a = decouple_mask(model, data, cfg, seed=5, log=_quiet)
    assert torch.equal(a, decouple_mask(model, data, cfg, seed=5, log=_quiet))
    assert not torch.equal(a, decouple_mask(model, data, cfg, seed=6, log=_quiet))


# -- (b) the inversion loss switch ----------------------------------------------------------------------------
@pytest.mark.parametrize("l_norm, l_ben, takes_norm", [
    (0.31, 1.0, True),   # the pixel bound exceeded
    (0.10, 3.01, True),  # the benign-feature bound exceeded
    (0.50, 4.00, True),  # both
    (0.10, 1.00, False),
    (0.30, 3.00, False),  # exactly on both bounds: not exceeded (strict >)
    (0.30, 1.00, False),
    (0.10, 3.00, False),
])
def test_inversion_loss_takes_l_norm_exactly_when_a_bound_is_exceeded(l_norm, l_ben, takes_norm):
    l_norm, l_ben, l_bd = (torch.tensor(v, requires_grad=True) for v in (l_norm, l_ben, 5.0))  # float32
    loss = inversion_loss(l_norm, l_ben, l_bd)
    loss.backward()
    if takes_norm:
        assert loss.item() == pytest.approx(l_norm.item())
        assert (l_norm.grad.item(), l_ben.grad.item(), l_bd.grad.item()) == (1.0, 0.0, 0.0)
    else:
        assert loss.item() == pytest.approx(-5.0 + 0.01 * l_ben.item())
        assert (l_norm.grad.item(), l_bd.grad.item()) == (0.0, -1.0)
        assert l_ben.grad.item() == pytest.approx(0.01)


def test_inversion_loss_is_elementwise_and_takes_its_bounds_and_weight():
    l_norm = torch.tensor([0.5, 0.5, 0.05, 0.05])
    l_ben = torch.tensor([0.5, 0.5, 2.0, 0.5])
    l_bd = torch.tensor([1.0, 1.0, 1.0, 1.0])
    out = inversion_loss(l_norm, l_ben, l_bd, norm_bound=0.4, ben_bound=1.0, ben_weight=0.5)
    assert torch.allclose(out, torch.tensor([0.5, 0.5, 0.05, -0.75]))
    out = inversion_loss(l_norm, l_ben, l_bd, norm_bound=0.6, ben_bound=2.0, ben_weight=0.5)
    assert torch.allclose(out, torch.tensor([-0.75, -0.75, 0.0, -0.75]))


# -- the other losses ---------------------------------------------------------------------------------------
def test_pretrain_loss_uses_the_soft_prediction_on_x_as_target_and_switches_the_pixel_weight():
    g = torch.Generator().manual_seed(0)
    logits_x = torch.randn(4, 3, generator=g, requires_grad=True)
    logits_g = torch.randn(4, 3, generator=g, requires_grad=True)
    feats_x, feats_g = torch.randn(4, 2, 2, 2, generator=g), torch.randn(4, 2, 2, 2, generator=g)
    x = torch.randn(4, 3, 4, 4, generator=g)
    soft = logits_x.detach().softmax(1)
    base = -(soft * logits_g.detach().log_softmax(1)).sum(1).mean() + F.mse_loss(feats_g, feats_x)
    cfg = BTIDBFConfig()  # pixel bound 0.1: weight 100 above, 0.01 below
    for offset, weight in ((0.5, 100.0), (0.2, 0.01)):  # pixel MSE 0.25 and 0.04
        loss, parts = pretrain_loss(logits_x, logits_g, feats_x, feats_g, x, x + offset, cfg)
        assert loss.item() == pytest.approx((base + weight * offset ** 2).item(), rel=1e-5), offset
        assert parts["pixel"].item() == pytest.approx(offset ** 2, rel=1e-4)
    loss.backward()
    assert logits_x.grad is None, "the prediction on x is the target: no gradient to it"
    assert logits_g.grad.abs().sum() > 0


@pytest.mark.parametrize("anchor", ["trained", "detached"])
def test_unlearning_loss_keeps_the_gradient_through_the_clean_features_only_in_the_authors_mode(anchor):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=g, requires_grad=True)
    f_mix = torch.randn(5, 3, 2, 2, generator=g, requires_grad=True)
    f_clean = torch.randn(5, 3, 2, 2, generator=g, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    loss, _ = unlearning_loss(logits, f_mix, f_clean, y, feature_weight=2.0, anchor=anchor)
    expected = F.cross_entropy(logits, y) + 2.0 * F.mse_loss(f_mix, f_clean)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert f_mix.grad.abs().sum() > 0
    if anchor == "trained":  # the authors' unlearn(): MSE's gradient, with the opposite sign, reaches f_b(x) too
        assert torch.allclose(f_clean.grad, -f_mix.grad)
    else:
        assert f_clean.grad is None
    with pytest.raises(ValueError, match="anchor"):
        unlearning_loss(logits, f_mix, f_clean, y, anchor="frozen")


@pytest.mark.parametrize("anchor", ["trained", "detached"])
def test_unlearning_trains_through_the_clean_features_only_in_the_authors_mode(toy_backdoor, monkeypatch, anchor):
    # one unlearning step (32 images, batch 32); the clean forward f_b(x) (the first features() call of a step)
    # is scaled by a parameter s = 1 that nothing else reads: s gets a gradient iff the clean branch does
    model = copy.deepcopy(toy_backdoor.model)
    s = torch.nn.Parameter(torch.ones(()))
    calls = []

    def features_spy(m, xn, _real=bti_dbf_module.features):
        calls.append(torch.is_grad_enabled())
        out = _real(m, xn)
        return out * s if len(calls) % 2 == 1 else out
    monkeypatch.setattr(bti_dbf_module, "features", features_spy)
    cfg = _tiny_cfg(unlearn_anchor=anchor, unlearn_epochs=1, batch_size=32)
    gen = build_generator(cfg, 0).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # grads of the one step stay on the parameters
    bti_dbf_module._unlearn_epochs(model, gen, _defender_data(32), cfg, opt, seed=0, tag=0, amp=False, log=_quiet)
    assert len(calls) == 2
    if anchor == "trained":
        assert calls == [True, True] and s.grad is not None and s.grad.abs() > 0
    else:
        assert calls == [False, True] and s.grad is None


def test_purification_loss_terms_and_pixel_weight_switch():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 4, generator=g)
    f_p, f_x = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    x = torch.randn(4, 3, 8, 8, generator=g)
    y = torch.tensor([3, 2, 1, 0])
    base = F.cross_entropy(logits, y) + F.mse_loss(f_p, f_x)
    cfg = BTIDBFConfig()  # bound 0.05: weight 100 above, 1 below
    for offset, weight in ((0.3, 100.0), (0.2, 1.0)):  # pixel MSE 0.09 and 0.04
        loss, parts = purification_loss(logits, f_p, f_x, x + offset, x, y, cfg)
        assert loss.item() == pytest.approx((base + weight * offset ** 2).item(), rel=1e-5), offset


def test_mix_count_is_ten_percent_plus_one_and_mixing_replaces_that_many_images_by_g_of_x():
    cfg = BTIDBFConfig()
    assert [mix_count(n, cfg) for n in (128, 32, 9, 1)] == [13, 4, 1, 1]
    xn = torch.randn(32, 3, 4, 4)
    mixed = _mix(xn, lambda x: x + 100.0, cfg, torch.Generator().manual_seed(0))
    replaced = (mixed != xn).flatten(1).any(1)
    assert replaced.sum() == 4
    assert torch.equal(mixed[replaced], xn[replaced] + 100.0) and torch.equal(mixed[~replaced], xn[~replaced])
    again = _mix(xn, lambda x: x + 100.0, cfg, torch.Generator().manual_seed(1))
    assert not torch.equal(again, mixed), "the replaced positions are drawn from the generator"


def test_the_target_term_pulls_the_inverted_images_to_the_given_class(toy_backdoor):
    # (U) and (P) from round 2 on: + CE(f(G(x)), target). Without the term this generator drifts to class 0; the
    # given class 2 is neither that nor the planted target.
    model = toy_backdoor.model
    data = _defender_data()
    snapshot = _snapshot(model)
    cfg = _tiny_cfg(batch_size=16, inversion_epochs=2, generator_lr=1e-2, norm_bound=1e9, ben_bound=1e9,
                    target_weight=10.0)
    mask = torch.full(feature_shape(model, (3, 16, 16)), 0.5)
    given = 2
    assert given != TARGET
    gen = train_generator(model, build_generator(cfg), mask, data, cfg, target=given, log=_quiet)
    _, votes = detect_target(model, gen, data, noise=0.0)
    assert votes[given] >= 0.75 * len(data), votes
    _assert_unchanged(model, snapshot, "train_generator")


# -- (c) target detection ------------------------------------------------------------------------------------
class _TrueTrigger(torch.nn.Module):
    """A 'generator' (normalized -> normalized images) that pastes the attack's real trigger."""

    def __init__(self, normalize, attack):
        super().__init__()
        self.normalize, self.attack = normalize, attack

    def forward(self, xn):
        x = (xn * self.normalize.std + self.normalize.mean).clamp(0, 1)
        return self.normalize(self.attack.apply_trigger(x))


def test_target_vote_finds_the_planted_target_with_the_true_trigger(toy_backdoor):
    # The whole inversion does not find the trigger reliably at test scale (see the next test): the vote is
    # tested with a generator that applies the real trigger, against an identity control.
    model, attack = toy_backdoor.model, toy_backdoor.attack
    data = _defender_data(120)  # 30 images per class
    snapshot = _snapshot(model)
    target, votes = detect_target(model, _TrueTrigger(model.normalize, attack), data, seed=0)
    assert target == TARGET
    assert votes.dtype == torch.int64 and votes.shape == (4,) and votes.sum() == len(data)
    assert votes[TARGET] >= 0.9 * len(data), votes
    # control: without the trigger the predictions follow the (balanced) classes and no class wins the vote
    _, clean_votes = detect_target(model, torch.nn.Identity(), data, seed=0)
    assert clean_votes.max() <= 0.4 * len(data), clean_votes
    _assert_unchanged(model, snapshot, "detect_target")


def test_trigger_inversion_runs_end_to_end_and_is_deterministic(toy_backdoor):
    model = toy_backdoor.model
    data = _defender_data()
    snapshot = _snapshot(model)
    logs = []
    cfg = _tiny_cfg()
    gen, mask, info = invert_trigger(model, data, cfg, device="cpu", seed=0, log=logs.append)
    x = model.normalize(data.images[:8].float() / 255)
    with torch.no_grad():
        out = gen(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert mask.shape == feature_shape(model, (3, 16, 16))
    assert 0 <= info["target"] < 4 and info["votes"].sum() == len(data)
    assert any("decoupling mask" in m for m in logs) and any("pre-training" in m for m in logs)
    assert any("target vote" in m for m in logs)
    again, mask2, info2 = invert_trigger(model, data, cfg, device="cpu", seed=0, log=_quiet)
    assert torch.equal(mask, mask2) and torch.equal(info["votes"], info2["votes"])
    with torch.no_grad():
        assert torch.equal(out, again(x)), "same seed, same generator"
    _assert_unchanged(model, snapshot, "invert_trigger")


# -- (d) BTI-DBF(U) and (P) leave the given model alone; (e) the purifier is an image transform ---------------
def test_unlearning_repairs_a_copy_and_leaves_the_given_model_untouched(toy_backdoor):
    model = toy_backdoor.model
    snapshot = _snapshot(model)
    logs = []
    repaired, info = bti_dbf_unlearn(model, _defender_data(), _tiny_cfg(), device="cpu", seed=0, log=logs.append)
    _assert_unchanged(model, snapshot, "bti_dbf_unlearn")
    assert repaired is not model and not repaired.training
    before, after = snapshot[0], repaired.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.endswith(".weight") for k in changed), "unlearning must change the weights"
    assert any(k.endswith("running_mean") for k in changed), "fine-tuning runs in training mode"
    assert 0 <= info["target"] < 4 and len(info["rounds"]) == 2
    assert sum("round" in m and "BTI-DBF(U)" in m for m in logs) == 2
    assert any("target_ce" in m for m in logs), "round 2 keeps the inverted images on the detected target"


def test_purification_leaves_the_model_untouched_and_returns_a_unit_interval_image_transform(toy_backdoor):
    model = toy_backdoor.model
    snapshot = _snapshot(model)
    purifier, info = bti_dbf_purify(model, _defender_data(), _tiny_cfg(), device="cpu", seed=0, log=_quiet)
    _assert_unchanged(model, snapshot, "bti_dbf_purify")
    assert isinstance(purifier, Purifier) and not purifier.training
    assert 0 <= info["target"] < 4 and info["votes"].sum() == 64
    x = torch.cat([torch.rand(6, 3, 16, 16), torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)])
    with torch.no_grad():
        out = purifier(x)
        logits = model(purifier(x))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert logits.shape == (8, 4)
    _assert_unchanged(model, snapshot, "the defended forward f(P(x))")


def test_purifier_converts_between_pixel_and_normalized_space_and_clamps():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(Purifier(torch.nn.Identity(), mean, std)(x), x, atol=1e-6)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, xn):
            seen.append(xn)
            return xn + 10.0  # far outside the valid range in pixel space
    out = Purifier(Spy(), mean, std)(x)
    assert torch.allclose(seen[0], (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.equal(out, torch.ones_like(x))
    assert torch.equal(Purifier(torch.nn.Identity())(x * 3 - 1), (x * 3 - 1).clamp(0, 1))  # no normalization


def test_at_least_one_round_is_required(toy_backdoor):
    model = toy_backdoor.model
    for run in (bti_dbf_unlearn, bti_dbf_purify):
        with pytest.raises(UserError, match="at least one round"):
            run(model, _defender_data(8), _tiny_cfg(rounds=0), log=_quiet)


class _StopAt(Exception):
    pass


LOSSES = ("decoupling_loss", "pretrain_loss", "inversion_loss", "unlearning_loss", "purification_loss")


def _count_steps(monkeypatch, stop: dict | None = None) -> dict:
    """Counts the training steps of each phase (the calls of its loss) and of the target vote; ``stop``:
    {loss name: call number} raises _StopAt at that call, as an interruption in the middle of a phase."""
    counts = {name: 0 for name in LOSSES + ("detect_target",)}
    for name in counts:
        real = getattr(bti_dbf_module, name)

        def counted(*args, _name=name, _real=real, **kwargs):
            counts[_name] += 1
            if stop and stop.get(_name) == counts[_name]:
                raise _StopAt(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(bti_dbf_module, name, counted)
    return counts


def _assert_same_run(whole, whole_info, resumed, info):
    assert info["target"] == whole_info["target"] and torch.equal(info["votes"], whole_info["votes"])
    assert info["rounds"] == whole_info["rounds"]
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), f"{k} differs after the resume"
    for k, v in whole_info["generator"].state_dict().items():
        assert torch.equal(v, info["generator"].state_dict()[k]), f"G's {k} differs after the resume"


@pytest.mark.parametrize("run, name", [(bti_dbf_unlearn, "BTI-DBF(U)"), (bti_dbf_purify, "BTI-DBF(P)")])
def test_a_run_stopped_between_rounds_resumes_to_the_same_result(tmp_path, monkeypatch, run, name, toy_backdoor):
    model = toy_backdoor.model
    data, cfg, fingerprint = _defender_data(32), _tiny_cfg(), {"defense": name}  # 1 step per phase and round
    whole, whole_info = run(model, data, cfg, device="cpu", seed=0, log=_quiet)

    def stop_in_round_2(message):
        if message.startswith(f"{name} round 2/"):
            raise _StopAt(message)  # every phase of round 1 is saved by now
    state = tmp_path / "state"
    with pytest.raises(_StopAt):
        run(model, data, cfg, device="cpu", seed=0, log=stop_in_round_2, state_path=state, fingerprint=fingerprint)
    assert (state / "round1" / "mask.pth").is_file() and (state / "vote.pth").is_file()
    logs, steps = [], _count_steps(monkeypatch)
    resumed, info = run(model, data, cfg, device="cpu", seed=0, log=logs.append, state_path=state,
                        fingerprint=fingerprint)
    # round 1 is not run again: its phases are reported done and take no step; round 2 runs in full
    last = "unlearning_loss" if name == "BTI-DBF(U)" else "purification_loss"
    assert steps == {**dict.fromkeys(steps, 0), "decoupling_loss": 1, "inversion_loss": 1, last: 1}, steps
    assert sum("were done before" in m for m in logs) == 4  # round 1: mask, pre-training, inversion, U or P
    _assert_same_run(whole, whole_info, resumed, info)
    with pytest.raises(UserError, match="other settings"):
        run(model, data, cfg, device="cpu", seed=0, log=_quiet, state_path=state, fingerprint={"defense": "other"})


# (run, the loss to stop in, at which call, the phase): 32 images in batches of 16 = 2 steps per epoch, 2 epochs
# per phase: call 7 of a phase that runs in every round is the first step of round 2's second epoch
MID_PHASE = [(bti_dbf_unlearn, "inversion_loss", 7, "trigger inversion (1)"),
             (bti_dbf_unlearn, "unlearning_loss", 7, "unlearning (1)"),
             (bti_dbf_purify, "decoupling_loss", 7, "decoupling mask (1)"),
             (bti_dbf_purify, "purification_loss", 7, "purifier training (1)"),
             (bti_dbf_purify, "pretrain_loss", 3, "generator pre-training (identity)")]


_WHOLE = {}


def _whole_run(run, model, data, cfg):
    """The uninterrupted run the stopped ones are compared with: the same for every phase of one defense, so it is
    made once per defense (a copy each time: no test can change another's)."""
    if run.__name__ not in _WHOLE:
        _WHOLE[run.__name__] = run(model, data, cfg, device="cpu", seed=0, log=_quiet)
    return copy.deepcopy(_WHOLE[run.__name__])


@pytest.mark.parametrize("run, loss, stop_at, phase", MID_PHASE,
                         ids=[f"{r.__name__}-{loss}" for r, loss, _, _ in MID_PHASE])
def test_a_run_stopped_in_the_middle_of_a_phase_resumes_there_to_the_same_result(tmp_path, monkeypatch, run, loss,
                                                                                  stop_at, phase, toy_backdoor):
    model = toy_backdoor.model
    data = _defender_data(32)
    cfg = _tiny_cfg(batch_size=16, mask_epochs=2, pretrain_epochs=2, inversion_epochs=2, unlearn_epochs=2,
                    purify_epochs=2)
    whole, whole_info = _whole_run(run, model, data, cfg)
    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        _count_steps(patch, stop={loss: stop_at})
        with pytest.raises(_StopAt):
            run(model, data, cfg, device="cpu", seed=0, log=_quiet, state_path=state)
    logs, steps = [], _count_steps(monkeypatch)
    resumed, info = run(model, data, cfg, device="cpu", seed=0, log=logs.append, state_path=state)
    assert any(m.startswith(f"resuming BTI-DBF {phase} from the end of epoch 1/2") for m in logs), logs
    total = 4 if loss == "pretrain_loss" else 8  # the steps of that loss in a whole run
    assert steps[loss] == total - (stop_at - 1), "the phase goes on with its second epoch, the earlier are skipped"
    assert steps["detect_target"] == (loss == "pretrain_loss"), "the vote is saved once done"
    _assert_same_run(whole, whole_info, resumed, info)
