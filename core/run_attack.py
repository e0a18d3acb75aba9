"""The job behind ``attack.py``: poison the data, train the classifier, evaluate, save everything."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .attacks import build_attack
from .checkpoint import save_classifier
from .data import dataset_info, evaluation_subset, load_split, seeded_subset
from .metrics import ba_asr, default_eval_batch_size
from .models import build_classifier
from .runlog import RunLog, format_metrics
from .train import resolve_device, train_classifier

# The paper's settings (Appendix C): the defaults of attack.py when no preset or flag says otherwise.
DEFAULTS = {
    "dataset": "CIFAR10", "model": "ResNet18", "attack": "BadNets", "width": 64, "normalization": "cifar10",
    "y_target": 0, "poisoned_rate": 0.1, "trigger": None, "alpha": 0.1,
    "epochs": 150, "batch_size": 128, "lr": 0.1, "optimizer": "SGD", "momentum": 0.9, "weight_decay": 5e-4,
    "schedule": "multistep", "milestones": [100, 130], "gamma": 0.1, "label_smoothing": 0.0, "augment": "crop_flip",
    "train_size": None, "test_size": None, "allow_embedded": False,
    "data_root": "data", "out": "attack", "device": "auto", "amp": True, "seed": 0,
    "eval_every": 10, "eval_batch_size": None, "fresh": False,
}
# Settings that change the trained model: a resume is refused if any of them differs.
TRAINING_KEYS = ("dataset", "model", "attack", "width", "normalization", "y_target", "poisoned_rate", "trigger",
                 "alpha", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule",
                 "milestones", "gamma", "label_smoothing", "augment", "train_size", "seed")


def run_dir(config: dict) -> Path:
    return Path(config["out"]) / config["dataset"] / config["model"] / config["attack"]


def load_data(config: dict, log):
    """Benign train/test splits of the config's data set (subsets when train_size/test_size are set)."""
    train = load_split(config["dataset"], "train", config["data_root"], config["allow_embedded"])
    test = load_split(config["dataset"], "test", config["data_root"], config["allow_embedded"])
    if config.get("train_size"):
        train = train.subset(seeded_subset(len(train), config["train_size"], config["seed"], train.labels))
    if config.get("test_size"):
        test = evaluation_subset(test, config["test_size"])
    log(f"data: {train.source}; using {len(train)} training images")
    log(f"data: {test.source}; using {len(test)} test images")
    return train, test


def run_attack(config: dict) -> dict:
    """Trains a (backdoored or benign) classifier as ``config`` says; returns the final metrics."""
    num_classes, image_size = dataset_info(config["dataset"])
    folder = run_dir(config)
    state_path = folder / "train_state.pth"
    if config["fresh"]:
        state_path.unlink(missing_ok=True)
    run = RunLog(folder, resume=state_path.is_file())
    device = resolve_device(config["device"])
    config = {**config, "eval_batch_size": config["eval_batch_size"] or default_eval_batch_size(device)}
    run.write_config(config)
    run.log(f"attack.py: {config['attack']} on {config['dataset']} / {config['model']} (width {config['width']}), "
            f"device {device}, output {folder}")
    torch.manual_seed(config["seed"])
    attack = build_attack(config["attack"], y_target=config["y_target"], poisoned_rate=config["poisoned_rate"],
                          seed=config["seed"], image_size=image_size, trigger_path=config["trigger"],
                          **({"alpha": config["alpha"]} if config["attack"] == "Blended" else {}))
    model = build_classifier(config["model"], config["dataset"], num_classes, config["width"], config["normalization"])
    train, test = load_data(config, run.log)
    poisoned_train, poisoned_idx = attack.poison_train(train)
    poisoned_test = attack.poison_test(test) if attack.poisons_data else None
    attack.save_trigger(folder)
    torch.save(poisoned_idx, folder / "poisoned_indices.pth")
    run.log(f"poisoned {len(poisoned_idx)} of {len(train)} training images "
            f"(rate {config['poisoned_rate'] if attack.poisons_data else 0}, target {attack.y_target})")
    started = time.time()

    def evaluate(epoch: int) -> dict:
        metrics = ba_asr(model, test, poisoned_test, config["eval_batch_size"], device)
        run.append_metric("evaluations", {"epoch": epoch, **metrics})
        run.log(f"eval after epoch {epoch}: {format_metrics(metrics)}")
        return metrics

    fingerprint = {k: config[k] for k in TRAINING_KEYS}
    train_classifier(model, poisoned_train, epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"],
                     optimizer=config["optimizer"], momentum=config["momentum"], weight_decay=config["weight_decay"],
                     schedule=config["schedule"], milestones=config["milestones"], gamma=config["gamma"],
                     label_smoothing=config["label_smoothing"], augment=config["augment"], device=device, amp=config["amp"], seed=config["seed"],
                     state_path=state_path, fingerprint=fingerprint, evaluate=evaluate,
                     eval_every=config["eval_every"], log=run.log)
    done = [e for e in run.metrics.get("evaluations", []) if e["epoch"] == config["epochs"]]
    final = {k: v for k, v in done[-1].items() if k != "epoch"} if done else evaluate(config["epochs"])
    save_classifier(folder / "model.pth", model.cpu(), attack=attack.config(), dataset=config["dataset"],
                    data=train.source, final_metrics=final)
    wall = time.time() - started
    run.update_metrics(final=final, attack=attack.config(), data=train.source, train_wall_seconds_this_call=round(wall, 1))
    run.log(f"done in {wall / 60:.1f} min: {format_metrics(final)}; model at {folder / 'model.pth'}")
    if final.get("ASR", 100.0) < 50:
        run.log(f"warning: ASR is only {final['ASR']:.2f}%: the backdoor did not take, so a defense has nothing to "
                f"remove; train longer (--epochs) or on more data (the embedded sample needs more epochs than the "
                f"full CIFAR-10)")
    return final
