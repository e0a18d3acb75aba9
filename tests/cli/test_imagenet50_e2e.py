"""ImageNet-50 (224×224, 50 classes) end to end, once: attack.py Benign, then attack.py LC -> refine.py ->
refine.py --eval on a tiny synthetic ImageNet-50 image folder (one training and one test image in each of its
first 11 classes: a 224×224 UNet 32 costs seconds per image on a CPU; one step each), with the paper's
ImageNet-50 settings otherwise (50-class torchvision ResNet-18, 20×20 BadNets patch, UNet 32, REFINE batch 64).
The real ImageNet-50 cannot be downloaded here; this keeps its path working.

LC is the attack run here because it covers the most in one run: the Benign run it needs, its look-up of that
run's model as its clean model, PGD on an ImageNet-size ResNet-18, and the BadNets patch it pastes. What the
other attacks do differently at 224 px (trigger, poisoning, per-batch hook inside the training loop, trigger
rebuilt from the saved tensors, preview) test_attacks_224.py checks in seconds; the REFINE half is the same for
all. The ImageNet-50 presets of both scripts are checked for every attack below, without training."""
import json

import pytest
import torch

import attack as attack_script
import refine as refine_script
from core.attacks import ATTACKS

ATTACK_NAMES = [name for name in ATTACKS if name != "Benign"]
# of the 50 (the model still has 50 outputs); at least 11: refine.py's preview shows 10 poisoned test images and
# fails with fewer (run_defense.write_preview)
CLASSES_ON_DISK = 11


@pytest.fixture(scope="module")
def imagenet50(tmp_path_factory):
    """data/ImageNet50/{train,test}/class<c>/0.png for the first 11 classes: smooth random colours, 224×224."""
    import cv2

    root = tmp_path_factory.mktemp("imagenet50")
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(CLASSES_ON_DISK):
            folder = root / "data" / "ImageNet50" / split / f"class{c:02d}"
            folder.mkdir(parents=True)
            small = torch.randint(0, 256, (1, 3, 7, 7), generator=g).float()
            img = torch.nn.functional.interpolate(small, size=224, mode="bilinear")[0].round().byte()
            cv2.imwrite(str(folder / "0.png"), img.permute(1, 2, 0).numpy())
    return root


def attack_args(root, attack, *extra):
    return ["--dataset", "ImageNet50", "--attack", attack, "--epochs", "1", "--eval-every", "1",
            "--data-root", str(root / "data"), "--out", str(root / "attack"), *extra]


def refine_args(root, attack, *extra):
    return ["--dataset", "ImageNet50", "--attack", attack, "--epochs", "1", "--eval-every", "1", *extra,
            "--data-fraction", "0.2", "--data-root", str(root / "data"),
            "--attack-dir", str(root / "attack"), "--out", str(root / "refine")]


@pytest.mark.slow  # the slowest end-to-end run (224×224 images); -m "not slow" skips it
def test_attack_refine_and_eval_on_imagenet50_shapes(imagenet50, capsys):
    # in-process (the scripts' main), not subprocesses: four interpreter starts would cost more than the runs
    root, attack = imagenet50, "LC"
    attack_script.main(attack_args(root, "Benign"))
    benign = root / "attack" / "ImageNet50" / "ResNet18" / "Benign" / "latest"
    assert json.loads((benign / "metrics.json").read_text())["final"]["BA_total"] == CLASSES_ON_DISK
    # LC poisons a share of the target class: all of its one image here, after one PGD step against the Benign model
    attack_script.main(attack_args(root, attack, "--lc-steps", "1", "--poisoned-rate", "1"))
    run = root / "attack" / "ImageNet50" / "ResNet18" / attack / "latest"
    assert str((benign / "model.pth").resolve()) in (run / "log.txt").read_text()  # the clean model it used
    pgd, = (root / "attack" / "ImageNet50" / "ResNet18" / attack / "pgd_cache").glob("pgd_*.pth")
    assert torch.load(pgd, weights_only=True)["images"].shape == (1, 3, 224, 224)  # PGD ran, on one image
    config = (run / "config.yaml").read_text()
    assert "augment: flip" in config and "batch_size: 128" in config  # the paper preset for backdoored models
    metrics = json.loads((run / "metrics.json").read_text())["final"]
    assert metrics["BA_total"] == CLASSES_ON_DISK and metrics["ASR_total"] == CLASSES_ON_DISK - 1  # target left out
    assert (run / "preview.png").is_file()
    saved = torch.load(run / "model.pth", weights_only=True)["meta"]
    assert int(saved["trigger"]["weight"].sum()) == 400  # the 20×20 patch of ImageNet-size images
    refine_script.main(refine_args(root, attack, "--unet-channels", "4"))  # the preset's 32: the test below
    defended = root / "refine" / "ImageNet50" / "ResNet18" / attack / "latest"
    refine_config = (defended / "config.yaml").read_text()
    assert "unet_channels: 4" in refine_config and "batch_size: 64" in refine_config
    result = json.loads((defended / "metrics.json").read_text())
    assert result["no_defense"] == metrics  # the same model on the same images, trigger rebuilt from model.pth
    # (a model trained one step answers the target class for nearly everything: compare the trigger itself too)
    rebuilt = torch.load(defended / "defended_model.pth", weights_only=True)["meta"]["trigger"]
    assert rebuilt.keys() == saved["trigger"].keys()
    assert all(torch.equal(rebuilt[k], saved["trigger"][k]) for k in rebuilt)
    capsys.readouterr()
    refine_script.main(["--eval", str(defended), "--data-root", str(root / "data")])
    assert f"ASR {result['final']['ASR']:.2f}%" in capsys.readouterr().out


@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_imagenet50_presets_of_every_attack(attack, tmp_path, monkeypatch):
    # what each of the seven end-to-end runs checked of its config.yaml, from the resolved configuration that
    # the scripts hand to their job (a per-attack section of a preset would show here)
    seen = {}
    monkeypatch.setattr(attack_script, "run_attack", lambda config: seen.setdefault("attack", config))
    monkeypatch.setattr(refine_script, "run_defense", lambda config: seen.setdefault("refine", config))
    attack_script.main(attack_args(tmp_path, attack))
    refine_script.main(refine_args(tmp_path, attack))
    assert seen["attack"]["augment"] == "flip" and seen["attack"]["batch_size"] == 128
    assert seen["refine"]["unet_channels"] == 32 and seen["refine"]["batch_size"] == 64
    assert not (tmp_path / "attack").exists() and not (tmp_path / "refine").exists()
