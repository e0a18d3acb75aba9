"""The job behind ``refine.py``: defend a trained classifier with REFINE, evaluate, save the defense."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .attacks import build_attack
from .checkpoint import atomic_save, load_classifier
from .config import read_yaml
from .data import dataset_info, evaluation_subset, load_split, seeded_subset
from .defenses import REFINE, load_defended, save_defended
from .errors import UserError
from .metrics import ba_asr, default_eval_batch_size
from .models import UNet
from .runlog import RunLog, format_metrics
from .train import resolve_device

# The paper's REFINE settings (Section 5.1, Appendix C); refine.py's defaults.
DEFAULTS = {
    "dataset": "CIFAR10", "model": "ResNet18", "attack": "BadNets", "model_path": None, "attack_dir": "attack",
    "tlabel": None, "trigger": None, "normalization": None,
    "unet_channels": 64, "loss": "ce", "sup": 0.1, "temperature": 0.07, "remap": True,
    "optimizer": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 150, "batch_size": 256,
    "schedule": "multistep", "milestones": [100, 130], "decay": 0.8, "augment": "refine",
    "pseudo_labels": "augmented", "compile": False,
    "data_fraction": 1.0, "test_size": None, "allow_embedded": False,
    "data_root": "data", "out": "refine_res", "run_name": None, "device": "auto", "amp": True, "seed": 0,
    "eval_every": 10, "eval_batch_size": None, "fresh": False,
}
TRAINING_KEYS = ("dataset", "model", "attack", "model_path", "unet_channels", "loss", "sup", "temperature", "remap",
                 "optimizer", "lr", "momentum", "weight_decay", "epochs", "batch_size", "schedule", "milestones",
                 "decay", "augment", "pseudo_labels", "data_fraction", "seed")


def attack_folder(config: dict) -> Path:
    return Path(config["attack_dir"]) / config["dataset"] / config["model"] / config["attack"]


def load_target_model(config: dict, num_classes: int):
    """The model to defend, and the attack config it was trained with (None for a third-party checkpoint)."""
    path = Path(config["model_path"]) if config["model_path"] else attack_folder(config) / "model.pth"
    if not config["model_path"] and not path.is_file():
        raise UserError(f"no trained model at {path}: run `python attack.py --dataset {config['dataset']} --attack "
                        f"{config['attack']}` first (same --preset), or pass --model-path")
    classifier, meta = load_classifier(path, config["model"], config["dataset"], num_classes, config["normalization"])
    return classifier, meta.get("attack"), path


def poisoned_testset(config: dict, attack_config: dict | None, test, image_size: int):
    """Rebuilds the attack that produced the model to measure ASR; None when it cannot be known."""
    if attack_config is None:
        if config["attack"] in (None, "Benign", "none") or config["tlabel"] is None and not config["trigger"]:
            return None, None
        attack_config = {"attack": config["attack"], "y_target": config["tlabel"] or 0, "seed": 0}
    if attack_config["attack"] == "Benign":
        return None, attack_config
    kwargs = {"y_target": attack_config["y_target"], "seed": attack_config.get("seed", 0), "image_size": image_size,
              "trigger_path": config["trigger"] or attack_config.get("trigger_path")}
    if "alpha" in attack_config:
        kwargs["alpha"] = attack_config["alpha"]
    attack = build_attack(attack_config["attack"], **kwargs)
    return attack.poison_test(test), attack_config


def default_run_name(config: dict) -> str:
    return f"{config.get('preset') or 'custom'}_seed{config['seed']}"


def run_refine(config: dict) -> dict:
    num_classes, image_size = dataset_info(config["dataset"])
    folder = Path(config["out"]) / config["dataset"] / config["model"] / str(config["attack"]) / (
        config["run_name"] or default_run_name(config))
    state_path = folder / "train_state.pth"
    if config["fresh"]:
        state_path.unlink(missing_ok=True)
    run = RunLog(folder, resume=state_path.is_file())
    device = resolve_device(config["device"])
    config = {**config, "eval_batch_size": config["eval_batch_size"] or default_eval_batch_size(device)}
    run.write_config(config)
    classifier, attack_config, model_path = load_target_model(config, num_classes)
    run.log(f"refine.py: defending {model_path} ({classifier.spec['model']} width {classifier.spec['width']}) "
            f"on {config['dataset']}, device {device}, output {folder}")
    train = load_split(config["dataset"], "train", config["data_root"], config["allow_embedded"])
    test = load_split(config["dataset"], "test", config["data_root"], config["allow_embedded"])
    if config["test_size"]:
        test = evaluation_subset(test, config["test_size"])
    count = int(round(config["data_fraction"] * len(train)))
    if not 0 < count <= len(train):
        raise UserError(f"--data-fraction must be in (0, 1], got {config['data_fraction']}")
    unlabeled = train.images[seeded_subset(len(train), count, config["seed"])]  # labels are never used
    run.log(f"data: {train.source}; {len(unlabeled)} unlabeled images for the defense")
    run.log(f"data: {test.source}; {len(test)} test images")
    poisoned_test, attack_config = poisoned_testset(config, attack_config, test, image_size)
    if poisoned_test is None:
        run.log("no attack known for this model: ASR is not measured (pass --attack and --trigger for a third-party model)")

    original = ba_asr(classifier.to(device), test, poisoned_test, config["eval_batch_size"], device)
    run.update_metrics(no_defense=original, attack=attack_config)
    run.log(f"no defense (original model): {format_metrics(original)}")

    torch.manual_seed(config["seed"])
    defense = REFINE(UNet(config["unet_channels"]), classifier, num_classes, seed=config["seed"], loss=config["loss"],
                     lam=config["sup"], temperature=config["temperature"], remap=config["remap"], device=device,
                     amp=config["amp"])
    (folder / "label_mapping.json").write_text(json.dumps(
        {"permutation": defense.remap.permutation.tolist(),
         "meaning": "the score of original class j is moved to position permutation[j]"}, indent=2))
    run.log(f"label mapping (class j -> position): {defense.remap.permutation.tolist()}")

    def evaluate(epoch: int) -> dict:
        metrics = defense.test(test, poisoned_test, config["eval_batch_size"])
        run.append_metric("evaluations", {"epoch": epoch, **metrics})
        run.log(f"REFINE after epoch {epoch}: {format_metrics(metrics)}")
        atomic_save({k: v.cpu() for k, v in defense.unet.state_dict().items()}, folder / "unet.pth")
        return metrics

    started = time.time()
    defense.train(unlabeled, epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"],
                  optimizer=config["optimizer"], momentum=config["momentum"], weight_decay=config["weight_decay"],
                  schedule=config["schedule"], milestones=config["milestones"], gamma=config["decay"],
                  augment=config["augment"], pseudo_labels=config["pseudo_labels"], compile=config["compile"],
                  state_path=state_path,
                  fingerprint={k: config[k] for k in TRAINING_KEYS}, evaluate=evaluate,
                  eval_every=config["eval_every"], log=run.log)
    done = [e for e in run.metrics.get("evaluations", []) if e["epoch"] == config["epochs"]]
    final = {k: v for k, v in done[-1].items() if k != "epoch"} if done else evaluate(config["epochs"])
    defended = defense.defended_model().cpu()
    save_defended(folder / "defended_model.pth", defended, config["unet_channels"], dataset=config["dataset"],
                  attack=attack_config, source_model=str(model_path), final_metrics=final)
    wall = time.time() - started
    run.update_metrics(final=final, train_wall_seconds_this_call=round(wall, 1))
    run.log(f"done in {wall / 60:.1f} min: no defense {format_metrics(original)} -> REFINE {format_metrics(final)}; "
            f"defended model at {folder / 'defended_model.pth'}")
    return {"no_defense": original, "refine": final}


def evaluate_run(run_folder, data_root: str = "data", device="auto", allow_embedded: bool = False,
                 batch_size: int | None = None) -> dict:
    """BA/ASR of a saved defense (``<run>/defended_model.pth``) on the benign and poisoned test sets."""
    folder = Path(run_folder)
    path = folder / "defended_model.pth" if folder.is_dir() else folder
    model, meta = load_defended(path)
    dataset = meta.get("dataset", "CIFAR10")
    _, image_size = dataset_info(dataset)
    saved = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
    test = load_split(dataset, "test", data_root, allow_embedded or saved.get("allow_embedded", False))
    if saved.get("test_size"):  # the run's own test subset, so that its final numbers are reproduced
        test = evaluation_subset(test, saved["test_size"])
    poisoned_test, _ = poisoned_testset({**DEFAULTS, **saved}, meta.get("attack"), test, image_size)
    device = resolve_device(device)
    return ba_asr(model.to(device), test, poisoned_test, batch_size, device)
