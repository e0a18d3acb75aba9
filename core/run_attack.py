"""The job behind ``attack.py``: poison the data, train the classifier, evaluate, save everything."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .attacks import all_settings, attack_class, build_attack
from .checkpoint import atomic_save, load_classifier, save_classifier
from .data import dataset_info, evaluation_subset, load_split, seeded_subset
from .metrics import ba_asr, default_eval_batch_size
from .download import ensure_data
from .models import build_classifier, resolve_normalization
from .errors import DivergedError, UserError
from .runlog import (check_run_folder, describe_split, finish_run, format_metrics, read_latest, report_finished,
                     run_name, run_settings, start_run, tensors_sha256)
from .train import EpochState, device_name, resolve_device, train_classifier
from .validate import flag, validate

# The paper's settings (Appendix C and the authors' code): the defaults of attack.py when no preset or flag
# says otherwise. The authors train every backdoored model with horizontal flips only (no random crop).
# poisoned_rate None: the attack's own default (10 %; LC 25 % of the target class; Adaptive 1 %). Each
# attack's own settings (core/attacks/*.py, e.g. alpha, wanet_k) join these with None = the attack's default.
DEFAULTS = {
    "dataset": "CIFAR10", "model": "ResNet18", "attack": "BadNets", "width": 64, "normalization": "cifar10",
    "y_target": 0, "poisoned_rate": None, "trigger": None,
    **{key: None for key in all_settings()},
    "epochs": 150, "batch_size": 128, "lr": 0.1, "optimizer": "SGD", "momentum": 0.9, "weight_decay": 5e-4,
    "schedule": "multistep", "milestones": [100, 130], "gamma": 0.1, "label_smoothing": 0.0, "augment": "flip",
    "train_size": None, "test_size": None, "allow_embedded": False,
    "data_root": "data", "out": "attack", "device": "auto", "amp": True, "seed": 0,
    "compile": False, "fused": False,  # speed-ups only (the fast preset turns them on)
    "eval_every": 10, "eval_batch_size": None, "fresh": False,
    "mean": None, "std": None, "download": False,  # explicit normalization (replaces the name); fetch CIFAR-10
}


def attack_root(config: dict) -> Path:
    """``<out>/<DATASET>/<MODEL>/<ATTACK>``: holds one folder per run (see core.runlog) and the ``latest`` pointer."""
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


def attack_settings(config: dict) -> dict:
    """The config with the attack's canonical name and only its own settings: another attack's setting that is
    set (``--alpha`` with WaNet) is refused; an LC run gets the path of its clean model."""
    cls = attack_class(config["attack"])
    config = {**config, "attack": cls.name}
    for key, (_, owners) in all_settings().items():
        if key not in cls.settings:
            if config.get(key) is not None:
                raise UserError(f"{flag(key)} is a setting of {', '.join(owners)}, not of {cls.name}")
            config.pop(key, None)
    if "benign_model" in cls.settings and not config.get("benign_model"):
        benign = attack_root({**config, "attack": "Benign"})
        latest = read_latest(benign)
        if latest is None or not (latest / "model.pth").is_file():
            preset = f" --preset {config['preset']}" if config.get("preset") else ""
            raise UserError(f"{cls.name} needs a clean model of {config['dataset']}/{config['model']} and none was "
                            f"found at {benign / 'latest' / 'model.pth'}: run `python attack.py --dataset "
                            f"{config['dataset']} --model {config['model']} --attack Benign{preset}` first, or pass "
                            f"--benign-model PATH")
        config["benign_model"] = str((latest / "model.pth").resolve())
    return config


def clean_model_for(config: dict, num_classes: int, device, log) -> dict:
    """LC's clean model (loaded weights-only, checked against the run's architecture) and its PGD cache."""
    model, _ = load_classifier(config["benign_model"], config["model"], config["dataset"], num_classes, log=log)
    log(f"clean model for {config['attack']}: {config['benign_model']}")
    return {"clean_model": model.to(device), "cache_dir": attack_root(config) / "pgd_cache", "device": device}


def run_attack(config: dict) -> dict:
    """Trains a (backdoored or benign) classifier as ``config`` says; returns the final metrics.

    Everything that can fail for a reason the user can fix (option values, data, trigger, an existing
    run in the way) is checked before the first file is written, so a refused run changes nothing.
    """
    config = validate("attack", config)
    num_classes, image_size = dataset_info(config["dataset"])
    config = {**config, **resolve_normalization(config["normalization"], config.get("mean"), config.get("std"))}
    device = resolve_device(config["device"])
    config = {**config, "eval_batch_size": config["eval_batch_size"] or default_eval_batch_size(device),
              "data_root": str(Path(config["data_root"]).expanduser().resolve()),
              "out": str(Path(config["out"]).expanduser().resolve())}
    notes = []  # log lines from before the run folder exists
    config = attack_settings(config)
    ensure_data(config, notes.append)
    extra = clean_model_for(config, num_classes, device, notes.append) if config.get("benign_model") else {}
    attack = build_attack(config["attack"], y_target=config["y_target"], poisoned_rate=config["poisoned_rate"],
                          seed=config["seed"], image_size=image_size, trigger_path=config["trigger"],
                          **{k: config[k] for k in attack_class(config["attack"]).settings}, **extra)
    config.update({k: v for k, v in attack.config().items() if k in config})  # the values used (e.g. wanet_k)
    torch.manual_seed(config["seed"])
    model = build_classifier(config["model"], config["dataset"], num_classes, config["width"], config["normalization"],
                             config["mean"], config["std"])
    train, test = load_data(config, notes.append)
    attack.plan(train.labels)  # an impossible plan (rate too high for the candidates) is refused now
    settings = run_settings(config, data={"train": describe_split(train), "test": describe_split(test)},
                            trigger_sha256=tensors_sha256(attack.trigger_tensors()))
    folder = attack_root(config) / run_name(config, settings)
    state_path = folder / "train_state.pth"
    status = check_run_folder(folder, settings, "model.pth", config["fresh"])
    if status == "finished":
        return report_finished(folder).get("final", {})
    if status == "resume":
        EpochState.read(state_path, settings)  # a damaged state file is named before anything is written
    poisoned_train, plan = attack.poison_train(train)  # LC runs (or reuses) its PGD here
    poisoned_test = attack.poison_test(test) if attack.poisons_data else None

    # -- every check passed: from here on the run writes into its folder ------------------------------
    run = start_run(folder, status, settings, config, notes, discard=("train_state.pth", "model.pth"),
                    header=f"attack.py: {config['attack']} on {config['dataset']} / {config['model']} "
                           f"(width {config['width']}), device {device}, output {folder}")
    attack.save_trigger(folder)
    if attack.poisons_data:
        attack.save_preview(test, folder / "preview.png")
    atomic_save({"payload": plan.payload, "cover": plan.cover}, folder / "poisoned_indices.pth")
    cover = f" and {len(plan.cover)} cover samples (trigger, true label)" if len(plan.cover) else ""
    run.log(f"poisoned {len(plan.payload)} of {len(train)} training images{cover} "
            f"(rate {attack.poisoned_rate}, target {attack.y_target})")
    started = time.time()

    def evaluate(epoch: int) -> dict:
        metrics = ba_asr(model, test, poisoned_test, config["eval_batch_size"], device)
        run.append_metric("evaluations", {"epoch": epoch, **metrics})
        run.log(f"eval after epoch {epoch}: {format_metrics(metrics)}")
        return metrics

    try:
        train_classifier(model, poisoned_train, epochs=config["epochs"], batch_size=config["batch_size"],
                         lr=config["lr"], optimizer=config["optimizer"], momentum=config["momentum"],
                         weight_decay=config["weight_decay"], schedule=config["schedule"],
                         milestones=config["milestones"], gamma=config["gamma"],
                         label_smoothing=config["label_smoothing"], augment=config["augment"], device=device,
                         amp=config["amp"], seed=config["seed"], state_path=state_path, fingerprint=settings,
                         evaluate=evaluate, eval_every=config["eval_every"], log=run.log,
                         roles=plan.roles(len(train)), batch_hook=attack.train_hook if attack.has_train_hook else None,
                         compile=config["compile"], fused=config["fused"])
    except DivergedError as exc:
        run.log(f"stopped: {exc}; no model saved, the last good epoch stays resumable", echo=False)
        raise
    done = [e for e in run.metrics.get("evaluations", []) if e["epoch"] == config["epochs"]]
    final = {k: v for k, v in done[-1].items() if k != "epoch"} if done else evaluate(config["epochs"])
    save_classifier(folder / "model.pth", model.cpu(), attack=attack.config(), trigger=attack.trigger_tensors(),
                    dataset=config["dataset"], data=train.source, final_metrics=final)
    wall = time.time() - started
    run.update_metrics(final=final, attack=attack.config(), data=train.source, device=device_name(device),
                       train_wall_seconds_this_call=round(wall, 1))
    finish_run(folder, settings)
    run.log(f"done in {wall / 60:.1f} min: {format_metrics(final)}; model at {folder / 'model.pth'}")
    if final.get("ASR", 100.0) < 50:
        run.log(f"warning: ASR is only {final['ASR']:.2f}%: the backdoor did not take, so a defense has nothing to "
                f"remove; train longer (--epochs) or on more data (the embedded sample needs more epochs than the "
                f"full CIFAR-10)")
    return final
