"""Input normalization: the authors' `backdoorbox` statistics, explicit --mean/--std, old checkpoints."""

import pytest
import torch

from core.checkpoint import FORMAT, atomic_save, load_classifier, save_classifier
from core.defenses import DeployedModel, LabelRemap, load_deployed, save_deployed
from core.errors import UserError
from core.models import NORMALIZATIONS, UNet, build_classifier, resolve_normalization

from conftest import one_line_refusal, run_main

BACKDOORBOX = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def test_backdoorbox_statistics_are_exact():
    assert NORMALIZATIONS["backdoorbox"] == BACKDOORBOX
    assert NORMALIZATIONS["cifar10"][1] == (0.2470, 0.2435, 0.2616)  # this toolkit's own, unchanged
    model = build_classifier("ResNet18", "CIFAR10", 10, width=4, normalization="backdoorbox")
    assert model.spec["mean"] == list(BACKDOORBOX[0]) and model.spec["std"] == list(BACKDOORBOX[1])
    assert torch.equal(model.normalize.std.flatten(), torch.tensor(BACKDOORBOX[1]))


def test_explicit_mean_std_survive_save_and_reload(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("ResNet18", "CIFAR10", 10, width=4, normalization="cifar10",
                             mean="0.5,0.5,0.5", std=[0.25, 0.5, 1.0]).eval()
    assert (model.spec["normalization"], model.spec["mean"], model.spec["std"]) == (
        "custom", [0.5, 0.5, 0.5], [0.25, 0.5, 1.0])
    x = torch.rand(3, 3, 32, 32)
    save_classifier(tmp_path / "m.pth", model)
    loaded, _ = load_classifier(tmp_path / "m.pth", "ResNet18", "CIFAR10", 10)
    assert loaded.spec == model.spec and torch.equal(loaded(x), model(x))
    defended = DeployedModel(model, UNet(4), LabelRemap(torch.roll(torch.arange(10), 1))).eval()
    save_deployed(tmp_path / "d.pth", defended, dataset="CIFAR10")
    reloaded, _ = load_deployed(tmp_path / "d.pth")
    assert reloaded.classifier.spec == model.spec and torch.equal(reloaded(x), defended(x))


def test_old_checkpoint_with_only_a_name_still_loads(tmp_path):
    model = build_classifier("ResNet18", "CIFAR10", 10, width=4, normalization="cifar10").eval()
    spec = {k: v for k, v in model.spec.items() if k not in ("mean", "std")}  # as saved before mean/std existed
    blob = {"format": FORMAT, "spec": spec, "state_dict": model.net.state_dict(), "meta": {}}
    atomic_save(blob, tmp_path / "old.pth")
    loaded, _ = load_classifier(tmp_path / "old.pth", "ResNet18", "CIFAR10", 10)
    assert loaded.spec == model.spec and loaded.spec["std"] == list(NORMALIZATIONS["cifar10"][1])
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_backdoorbox_raw_state_dict_sees_its_own_normalization(tmp_path):
    torch.manual_seed(0)
    net = build_classifier("ResNet18", "CIFAR10", 10, width=8).net.eval()  # BackdoorBox parameter names
    torch.save(net.state_dict(), tmp_path / "bb.pth")
    logs = []
    loaded, _ = load_classifier(tmp_path / "bb.pth", "ResNet18", "CIFAR10", 10, "backdoorbox", log=logs.append)
    assert logs == [] and loaded.spec["normalization"] == "backdoorbox"
    x = torch.rand(4, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in BACKDOORBOX)
    assert torch.equal(loaded(x), net((x - mean) / std))
    cifar10, _ = load_classifier(tmp_path / "bb.pth", "ResNet18", "CIFAR10", 10, "cifar10", log=logs.append)
    assert not torch.allclose(cifar10(x), loaded(x))  # the two statistics really feed different images
    explicit, _ = load_classifier(tmp_path / "bb.pth", "ResNet18", "CIFAR10", 10, None, "0.4914,0.4822,0.4465",
                                  "0.2023,0.1994,0.2010", log=logs.append)
    assert explicit.spec["normalization"] == "backdoorbox" and torch.equal(explicit(x), loaded(x))


def test_raw_state_dict_without_normalization_warns(tmp_path):
    torch.save(build_classifier("ResNet18", "CIFAR10", 10, width=4).net.state_dict(), tmp_path / "raw.pth")
    logs = []
    loaded, _ = load_classifier(tmp_path / "raw.pth", "ResNet18", "CIFAR10", 10, log=logs.append)
    assert loaded.spec["normalization"] == "none" and len(logs) == 1
    assert "warning" in logs[0] and "no input normalization is assumed" in logs[0] and "backdoorbox" in logs[0]


@pytest.mark.parametrize("mean, std, message", [
    ("0.5,0.5", "0.5,0.5,0.5", "--mean must be 3 comma-separated numbers"),
    ("0.5,0.5,0.5", "0.5,0,0.5", "--std values must be positive"),
    ("0.5,0.5,0.5", None, "--mean and --std go together"),
    (None, "1,1,1", "--mean and --std go together"),
    ("a,b,c", "1,1,1", "--mean must be 3"),
])
def test_bad_mean_std_are_refused(mean, std, message):
    with pytest.raises(UserError, match=message):
        resolve_normalization("none", mean, std)


def test_bad_mean_std_on_the_command_line_is_one_line(tmp_path, capsys):
    line = one_line_refusal("attack", ["--mean", "0.5,0.5", "--std", "1,1,1", "--data-root", str(tmp_path / "none"),
                                       "--out", str(tmp_path / "out")], capsys, tmp_path)
    assert "--mean must be 3" in line and not (tmp_path / "out").exists()  # refused before anything is written
    code, out, _ = run_main("refine", ["--help"], capsys)
    assert code == 0 and "BackdoorBox or BTI-DBF need `backdoorbox`" in " ".join(out.split())
