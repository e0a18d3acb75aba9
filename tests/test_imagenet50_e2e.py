"""ImageNet-50 (224×224, 50 classes) end to end, for every attack of the paper: attack.py -> refine.py ->
refine.py --eval on a tiny synthetic 50-class image folder (one training and one test image per class, one
step each), with the paper's ImageNet-50 settings otherwise (20×20 BadNets patch, torchvision ResNet-18,
UNet 32, REFINE batch 64). The real ImageNet-50 cannot be downloaded here; this keeps its path working."""
import json

import pytest
import torch

import attack as attack_script
import refine as refine_script
from core.attacks import ATTACKS


ATTACK_NAMES = [name for name in ATTACKS if name != "Benign"]


@pytest.fixture(scope="module")
def imagenet50(tmp_path_factory):
    """data/ImageNet50/{train,test}/class<c>/0.png (smooth random colours, 224×224) and the Benign model LC needs."""
    import cv2

    root = tmp_path_factory.mktemp("imagenet50")
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(50):
            folder = root / "data" / "ImageNet50" / split / f"class{c:02d}"
            folder.mkdir(parents=True)
            small = torch.randint(0, 256, (1, 3, 7, 7), generator=g).float()
            img = torch.nn.functional.interpolate(small, size=224, mode="bilinear")[0].round().byte()
            cv2.imwrite(str(folder / "0.png"), img.permute(1, 2, 0).numpy())
    attack_script.main(attack_args(root, "Benign"))
    return root


def attack_args(root, attack):
    return ["--dataset", "ImageNet50", "--attack", attack, "--epochs", "1", "--eval-every", "1",
            "--data-root", str(root / "data"), "--out", str(root / "attack"), "--test-size", "50",
            *(["--lc-steps", "1"] if attack == "LC" else [])]


@pytest.mark.slow  # about 45 s per attack on 2 CPU cores: a 224×224 UNet 32 is costly; -m "not slow" skips it
@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_attack_refine_and_eval_on_imagenet50_shapes(imagenet50, attack, capsys):
    # in-process (the scripts' main), not subprocesses: 22 interpreter starts would cost more than the runs
    root = imagenet50
    attack_script.main(attack_args(root, attack))
    run = root / "attack" / "ImageNet50" / "ResNet18" / attack / "latest"
    config = (run / "config.yaml").read_text()
    assert "augment: flip" in config and "batch_size: 128" in config  # the paper preset for backdoored models
    metrics = json.loads((run / "metrics.json").read_text())["final"]
    assert metrics["BA_total"] == 50 and metrics["ASR_total"] == 49  # the target class is left out
    assert (run / "preview.png").is_file()
    saved = torch.load(run / "model.pth", weights_only=True)["meta"]
    if attack in ("BadNets", "Physical", "LC"):
        assert int(saved["trigger"]["weight"].sum()) == 400  # the 20×20 patch of ImageNet-size images
    refine_script.main(["--dataset", "ImageNet50", "--attack", attack, "--epochs", "1", "--eval-every", "1",
                        "--data-fraction", "0.1", "--test-size", "50", "--data-root", str(root / "data"),
                        "--attack-dir", str(root / "attack"), "--out", str(root / "refine")])
    defended = root / "refine" / "ImageNet50" / "ResNet18" / attack / "latest"
    refine_config = (defended / "config.yaml").read_text()
    assert "unet_channels: 32" in refine_config and "batch_size: 64" in refine_config
    result = json.loads((defended / "metrics.json").read_text())
    assert result["no_defense"] == metrics  # the same model on the same images, trigger rebuilt from model.pth
    capsys.readouterr()
    refine_script.main(["--eval", str(defended), "--data-root", str(root / "data")])
    assert f"ASR {result['final']['ASR']:.2f}%" in capsys.readouterr().out
