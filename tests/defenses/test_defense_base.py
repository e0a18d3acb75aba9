"""The common defense interface: parts saved and reloaded by one loader, no defense mutates the model it is
given, the one training loop, and defend.py's errors."""
from pathlib import Path

import pytest
import torch

from core.defenses import (DEFENSES, BTIDBFPurify, BTIDBFUnlearn, DeployedModel, FineTuning, FitContext,
                           NeuralCleanseDefense, REFINE, RefineDefense, ShrinkPadDefense, TMR, defense_class, load_deployed, save_deployed)
from core.defenses.parts import PARTS, spec_of
from core.errors import UserError
from core.models import UNet, build_classifier
from core.train import fit, train_classifier

from conftest import one_line_refusal

ROOT = Path(__file__).resolve().parents[2]
QUIET = FitContext(device="cpu", log=lambda message: None)
TINY_BTI = dict(rounds=1, mask_epochs=1, pretrain_epochs=1, inversion_epochs=1, unlearn_epochs=1, purify_epochs=1,
                generator_channels=4, generator_blocks=2, batch_size=16)
TINY_NC = dict(nc_epochs=1, pretrain_epochs=1, purify_epochs=1, generator_channels=4, generator_blocks=2, batch_size=16)


def _model(seed=0, classes=4):
    torch.manual_seed(seed)
    return build_classifier("ResNet18", "CIFAR10", classes, width=4)


def _snapshot(model):
    """Everything a defense could change in place: weights, BatchNorm buffers, modes, requires_grad."""
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def _same(model, snapshot):
    state, modes, grads = snapshot
    return (all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
            and [m.training for m in model.modules()] == modes and [p.requires_grad for p in model.parameters()] == grads)


@pytest.mark.parametrize("defense", [
    RefineDefense(unet_channels=4, epochs=1, batch_size=16, optimizer="Adam", lr=1e-3),
    TMR(epochs=1, batch_size=16, optimizer="Adam", lr=1e-3),
    ShrinkPadDefense(pad_size=2),
    BTIDBFPurify(**TINY_BTI),
    BTIDBFUnlearn(**TINY_BTI),
    NeuralCleanseDefense(**TINY_NC),
    FineTuning(ft_epochs=1, ft_batch_size=16),
], ids=lambda d: d.name)
def test_defenses_leave_the_given_model_bit_identical(defense, synthetic):
    model = _model().train()  # in training mode on purpose: a defense must not switch it either
    before = _snapshot(model)
    deployed = defense.fit(model, synthetic(32, size=16), QUIET)
    assert isinstance(deployed, DeployedModel)
    assert _same(model, before), f"{defense.name} changed the model it was given"
    assert deployed.classifier is not model


def test_bti_dbf_u_repairs_a_copy_and_p_keeps_the_weights(synthetic):
    model = _model().eval()
    before = _snapshot(model)
    data = synthetic(32, size=16)
    repaired = BTIDBFUnlearn(**TINY_BTI).fit(model, data, QUIET).classifier
    purified = BTIDBFPurify(**TINY_BTI).fit(model, data, QUIET).classifier
    assert _same(model, before)
    changed = [k for k, v in repaired.state_dict().items() if not torch.equal(v, before[0][k])]
    assert changed, "BTI-DBF(U) must change (a copy of) the model"
    assert all(torch.equal(v, before[0][k]) for k, v in purified.state_dict().items()), "BTI-DBF(P) keeps F as it is"


def test_fine_tuning_the_same_model_after_refine_still_trains(synthetic):
    # the bug the interface removed: REFINE froze the caller's model in place, so FT afterwards trained nothing
    model = _model()
    REFINE(UNet(4), model, num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_classifier(model, synthetic(32, size=16), epochs=1, batch_size=16, lr=0.05, log=lambda m: None)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("defense", [
    RefineDefense(unet_channels=4, epochs=1, batch_size=16),
    TMR(epochs=1, batch_size=16),
    ShrinkPadDefense(pad_size=2),
    FineTuning(ft_epochs=1, ft_batch_size=16),
    BTIDBFPurify(**TINY_BTI),
    NeuralCleanseDefense(**TINY_NC),
], ids=lambda d: d.name)
def test_every_deployed_model_reloads_from_its_parts_alone(defense, synthetic, tmp_path):
    deployed = defense.fit(_model(), synthetic(32, size=16), QUIET).eval()
    save_deployed(tmp_path / "d.pth", deployed, defense=defense.name)
    loaded, meta = load_deployed(tmp_path / "d.pth")
    assert meta["defense"] == defense.name and loaded.describe() == deployed.describe()
    x = torch.rand(5, 3, 16, 16)
    torch.manual_seed(1)
    expected = deployed(x)
    torch.manual_seed(1)  # ShrinkPad and the purifier's noise are random: the same draws
    assert torch.allclose(loaded(x), expected, atol=1e-6)


def test_parts_registry_rebuilds_each_part_from_its_spec():
    for part in (UNet(4), ShrinkPadDefense(pad_size=3).fit(_model(), _tiny_images(), QUIET).transform):
        name, spec = spec_of(part)
        assert type(PARTS[name](**spec)) is type(part)
    with pytest.raises(TypeError, match="not a part"):
        spec_of(torch.nn.Conv2d(3, 3, 1))


def _tiny_images():
    from core.data import Split
    return Split(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ("a",), "zeros")


def test_fit_averages_the_parts_and_sets_modes_by_name():
    lin, frozen = torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1)
    seen_modes = []

    def loss_fn(x, y, mods):
        seen_modes.append((mods["lin"].training, mods["bn"].training))
        out = mods["lin"](x.float())
        return ((out.squeeze(1) - y) ** 2).mean(), {"half": torch.tensor(0.5)}

    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    means = fit(loss_fn, {"lin": lin, "bn": frozen}, torch.randn(10, 2), torch.randn(10), optimizer=opt, epochs=2,
                batch_size=4, device="cpu", trainable=("lin",), log=lambda m: None)
    assert set(seen_modes) == {(True, False)}
    assert means["half"] == pytest.approx(0.5) and "loss" in means


def test_defense_names_and_aliases():
    assert set(DEFENSES) == {"REFINE", "BTI-DBF-P", "BTI-DBF-U", "NC", "ShrinkPad", "T-MR", "FT", "FT+REFINE", "REFINE-BB"}
    assert defense_class("BTI-DBF(P)") is BTIDBFPurify and defense_class("tmr") is TMR
    assert defense_class("blackbox-refine").name == "REFINE-BB"
    with pytest.raises(UserError, match="unknown defense 'Magic'; choose one of REFINE"):
        defense_class("Magic")


def test_defend_cli_refuses_another_defenses_setting_and_unknown_names(tmp_path, capsys):
    line = one_line_refusal("defend", ["--defense", "ShrinkPad", "--rounds", "3"], capsys, tmp_path)
    assert "--rounds is a setting of BTI-DBF-P, BTI-DBF-U, not of ShrinkPad" in line
    assert "unknown defense 'Magic'" in one_line_refusal("defend", ["--defense", "Magic"], capsys, tmp_path)
    line = one_line_refusal("defend", ["--defense", "BTI-DBF-P", "--rounds", "0", "--model-path",
                                       str(ROOT / "README.md")], capsys, tmp_path)
    assert "--rounds must be an integer >= 1, got 0" in line


def test_preview_grid_has_a_row_per_stage(synthetic, tmp_path):
    import cv2

    from core.run_defense import write_preview
    data = synthetic(8, size=16)
    defense = BTIDBFPurify(**TINY_BTI)
    deployed = defense.fit(_model(), data, QUIET).cpu()
    path = write_preview(tmp_path / "p.png", deployed, defense, data, data, seed=0, count=4)
    image = cv2.imread(str(path))
    # rows: clean, inverted G(x), poisoned, purified; each 16 px upscaled 6x
    assert image.shape[:2] == (4 * 16 * 6, 4 * 16 * 6)


def test_fine_tuning_deploys_the_tuned_copy_not_the_given_model(synthetic):
    model = _model()
    deployed = FineTuning(ft_epochs=1, ft_batch_size=16).fit(model, synthetic(32), QUIET)
    tuned, given = deployed.classifier.state_dict(), model.state_dict()
    assert any(not torch.equal(tuned[k], given[k]) for k in given if given[k].is_floating_point())


def test_tmr_applies_its_perturbation_in_eval_mode_too(synthetic):
    logs = []
    deployed = TMR(epochs=1, batch_size=16, optimizer="Adam", lr=1e-2).fit(
        _model(), synthetic(32), FitContext(device="cpu", log=logs.append)).eval()
    assert any(line.startswith("T-MR epoch 1/1") for line in logs), "its progress lines name another method"
    x = torch.rand(4, 3, 32, 32) * 0.5 + 0.25  # inside (0, 1): a shift shows, the clamp does not hide it
    assert deployed.transform.delta.abs().sum() > 0, "T-MR trained no perturbation"
    assert not torch.equal(deployed.transform(x), x), "the perturbation is not applied in eval mode"
