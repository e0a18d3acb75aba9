import pathlib

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
    loaded, _ = load_classifier(tmp_path / "bb.pth", "ResNet18", "CIFAR10", 10, normalization="none")
    assert loaded.spec["width"] == 16 and loaded.spec["normalization"] == "none"
    keys = set(loaded.net.state_dict())
    assert keys == set(net.state_dict())  # every BackdoorBox tensor, DataParallel prefix stripped, was loaded
    # BackdoorBox naming: identity shortcuts are empty (no tensors), downsampling ones are conv + BN
    assert not any(k.startswith(("layer1.0.shortcut", "layer4.1.shortcut")) for k in keys)
    assert {"layer2.0.shortcut.0.weight", "layer4.0.shortcut.1.running_var", "linear.weight"} <= keys
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.net(x), net.eval()(x))
    with pytest.raises(UserError, match="does not fit a ResNet34"):
        load_classifier(tmp_path / "bb.pth", "ResNet34", "CIFAR10", 10, normalization="none")


class Payload:
    """Pickles as a call to Path.touch(sentinel): unpickling it with code allowed creates the sentinel file."""

    def __init__(self, sentinel):
        self.sentinel = pathlib.Path(sentinel)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.sentinel,))


def _classifier_file(path, payload):
    save_classifier(path, build_classifier("ResNet18", "CIFAR10", 10, width=4))
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["conv1.weight"] = payload
    torch.save(blob, path)
    return lambda: load_classifier(path, "ResNet18", "CIFAR10", 10)


def _raw_state_dict_file(path, payload):
    state = dict(build_classifier("ResNet18", "CIFAR10", 10, width=4).net.state_dict())
    state["linear.weight"] = payload
    torch.save(state, path)
    return lambda: load_classifier(path, "ResNet18", "CIFAR10", 10)


def _defended_file(path, payload):
    from core.defenses import REFINE, load_deployed, save_deployed
    from core.models import UNet

    model = build_classifier("ResNet18", "CIFAR10", 10, width=4)
    save_deployed(path, REFINE(UNet(4), model, num_classes=10).defended_model())
    blob = torch.load(path, weights_only=True)
    blob["transform"]["state_dict"]["outc.weight"] = payload
    torch.save(blob, path)
    return lambda: load_deployed(path)


def _trigger_file(attack):
    def build(path, payload):
        from core.attacks import build_attack

        tensors = build_attack(attack).trigger_tensors()
        torch.save({**tensors, "pattern": payload}, path)
        return lambda: build_attack(attack, trigger_path=path)
    return build


def _pattern_only_file(path, payload):
    from core.attacks.base import load_trigger_image

    torch.save(payload, path)  # a trigger may also be a bare tensor
    return lambda: load_trigger_image(path, 32)


def _training_state_file(path, payload):
    from core.train import EpochState

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    EpochState(path, {"model": net}, opt, {"lr": 0.1}).save(3)
    blob = torch.load(path, weights_only=True)
    blob["modules"]["model"]["weight"] = payload
    torch.save(blob, path)
    return lambda: EpochState(path, {"model": torch.nn.Linear(3, 2)}, opt, {"lr": 0.1}).load()


LOADERS = {"classifier": _classifier_file, "raw state_dict": _raw_state_dict_file, "defended model": _defended_file,
           "BadNets trigger": _trigger_file("BadNets"), "Blended trigger": _trigger_file("Blended"),
           "bare trigger tensor": _pattern_only_file, "training state": _training_state_file}


def test_the_payload_runs_when_code_is_allowed(tmp_path):
    # the control: without weights_only the object below does run (else the refusals below would prove nothing)
    torch.save({"state_dict": {"w": Payload(tmp_path / "ran")}}, tmp_path / "evil.pth")
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert (tmp_path / "ran").is_file()


@pytest.mark.parametrize("kind", list(LOADERS))
def test_every_loader_refuses_a_checkpoint_with_pickled_code_and_never_runs_it(tmp_path, kind):
    sentinel = tmp_path / "code_ran"
    load = LOADERS[kind](tmp_path / "evil.pth", Payload(sentinel))
    try:
        with pytest.raises(UserError, match="pickled Python objects"):
            load()
    finally:
        assert not sentinel.exists(), f"loading the {kind} ran the pickled code"


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_classifier(tmp_path / "none.pth", "ResNet18", "CIFAR10", 10)
