"""Every classifier network has timm's split forward_features / forward_head, and so every defense that works on
features (BTI-DBF) serves every architecture, as do Neural Cleanse and its purifier."""
import pytest
import torch

from conftest import make_synthetic
from core.defenses.base import FitContext
from core.defenses.bti_dbf import BTIDBFPurify, BTIDBFUnlearn, GeneratorUNet as BTIGeneratorUNet
from core.defenses.neural_cleanse import NeuralCleanseDefense
from core.defenses.parts import DeployedModel, Purifier, load_deployed, save_deployed
from core.models import MODELS, GeneratorUNet, build_classifier

# (dataset kind, name) -> (dataset, width, image side): tiny networks; the ImageNet ResNets come at full width
SIZES = {"cifar": ("CIFAR10", 4, 32), "imagenet": ("ImageNet50", 64, 64)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny kernels: on a busy 2-core machine one intra-op thread is many times faster than two
    (a width-4 DenseNet121 step: 0.2 s against 4 s measured beside other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(name: str, kind: str, num_classes: int = 4):
    dataset, width, side = SIZES[kind]
    torch.manual_seed(0)
    return build_classifier(name, dataset, num_classes, width=width, normalization="cifar10"), side


@pytest.mark.parametrize("kind, name", sorted(MODELS))
def test_forward_is_the_head_of_the_features_for_every_architecture(kind, name):
    model, side = _tiny(name, kind)
    net = model.net.eval()
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = net.forward_features(x)
        assert torch.equal(net(x), net.forward_head(feats))  # the same ops in the same order: bit for bit
    if name == "ViT":
        assert feats.shape == (2, (side // 4) ** 2 + 1, 12)  # tokens × 3·width
    else:
        assert feats.dim() == 4 and feats.shape[0] == 2  # N×C×h×w: the last convolutional stage
    assert net(x).shape == (2, 4)


def test_torchvision_resnets_stay_torchvision_modules():
    # the state_dict keys, the initialisation from the global generator and the forward are torchvision's
    import torchvision

    for depth in (18, 50):
        torch.manual_seed(3)
        reference = getattr(torchvision.models, f"resnet{depth}")(num_classes=5).eval()
        torch.manual_seed(3)
        net = build_classifier(f"ResNet{depth}", "ImageNet50", 5, normalization="imagenet").net.eval()
        assert isinstance(net, torchvision.models.ResNet)
        assert list(net.state_dict()) == list(reference.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), reference.state_dict().values()))
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(net(x), reference(x))
        net.load_state_dict(reference.state_dict())  # torchvision checkpoints load as they are


def test_the_generator_lives_in_core_models_and_saved_purifiers_rebuild_it(tmp_path):
    assert GeneratorUNet is BTIGeneratorUNet
    model, _ = _tiny("VGG16", "cifar")
    torch.manual_seed(0)
    purifier = Purifier(GeneratorUNet(4, 3), model.spec["mean"], model.spec["std"], 0.0).eval()
    save_deployed(tmp_path / "d.pth", DeployedModel(model.eval(), purifier))
    loaded, _ = load_deployed(tmp_path / "d.pth")
    assert type(loaded.transform.unet) is GeneratorUNet
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(purifier(x)))


# BTI-DBF's (U) and (P), and NC with its purifier, end to end on every other architecture (the CIFAR ResNets
# are test_bti_dbf's and test_neural_cleanse's): one round / epoch of everything, 16 images.
TINY = dict(batch_size=16, mask_epochs=1, pretrain_epochs=1, inversion_epochs=1, generator_channels=4,
            generator_blocks=3, rounds=1, unlearn_epochs=1, purify_epochs=1)
DEFENSES = {
    "BTI-DBF-U": lambda: BTIDBFUnlearn(**TINY),
    "BTI-DBF-P": lambda: BTIDBFPurify(**TINY),
    "NC": lambda: NeuralCleanseDefense(nc_epochs=1, nc_classes_per_pass=4, batch_size=16, generator_channels=4,
                                       generator_blocks=3, pretrain_epochs=1, purify_epochs=1),
}


@pytest.mark.parametrize("defense", sorted(DEFENSES))
@pytest.mark.parametrize("kind, name", [("cifar", "VGG16"), ("cifar", "DenseNet121"), ("cifar", "ViT"),
                                        ("imagenet", "ResNet18")])
def test_every_feature_defense_runs_on_every_architecture(kind, name, defense):
    model, side = _tiny(name, kind)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = make_synthetic(16, size=side, seed=3)
    logs = []
    runner = DEFENSES[defense]()
    deployed = runner.fit(model, data, FitContext(device="cpu", seed=0, log=logs.append))
    assert 0 <= runner.detection["target"] < 4
    x = torch.rand(3, 3, side, side)
    with torch.no_grad():
        out = deployed.eval()(x)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the given model is not modified"
    if defense.startswith("BTI"):
        assert any("trigger inversion" in m for m in logs) and any("target vote" in m for m in logs)
