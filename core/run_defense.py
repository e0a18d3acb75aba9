"""The job behind ``defend.py`` and ``refine.py``: defend a trained classifier with one defense, evaluate,
save the deployed model.

One job for every defense (core.defenses.DEFENSES): it finds the model to defend and the poisoned test set of
its attack, takes the defender's share of the training set, runs ``Defense.fit`` with a resumable context and
evaluates the deployed model with the same metrics. Outputs: ``<out>/<DATASET>/<MODEL>/<ATTACK>/<DEFENSE>/<run>``
(REFINE keeps the official layout, ``refine_res/<DATASET>/<MODEL>/<ATTACK>/<run>``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .attacks import attack_class, canonical_name, restore_attack
from .checkpoint import load_classifier
from .config import read_yaml
from .data import dataset_info, evaluation_subset, load_split, seeded_subset
from .defenses import DEFENSES, FitContext, defense_class, load_deployed, save_deployed
from .download import ensure_data
from .errors import DivergedError, UserError
from .metrics import ba_asr, default_eval_batch_size
from .runlog import (atomic_text, check_run_folder, describe_split, finish_run, format_metrics, read_latest,
                     report_finished, run_name, run_settings, start_run)
from .train import EpochState, device_name, resolve_device
from .validate import validate

# What every defense run has, whatever the defense: the model to defend and its attack, the data, where
# outputs go and how the run goes. Each defense adds its own settings (core.defenses: ``Defense.defaults``).
COMMON = {
    "defense": "REFINE", "dataset": "CIFAR10", "model": "ResNet18", "attack": "BadNets", "model_path": None,
    "attack_dir": "attack", "tlabel": None, "trigger": None, "normalization": None,
    "compile": False, "fused": False, "test_size": None, "allow_embedded": False,
    "data_root": "data", "out": None, "run_name": None, "device": "auto", "amp": True, "seed": 0,
    "eval_every": 10, "eval_batch_size": None, "fresh": False,
    "mean": None, "std": None, "download": False,  # explicit normalization of a raw state_dict; fetch CIFAR-10
}


def defaults_for(defense: str) -> dict:
    """The built-in configuration of a run of ``defense``: :data:`COMMON` + the defense's own settings."""
    cls = defense_class(defense)
    return {**COMMON, "defense": cls.name, **cls.defaults}


def all_defense_settings() -> dict:
    """Every defense's settings (key -> default of the first defense that has it): defend.py's flags."""
    merged = {}
    for cls in DEFENSES.values():
        for key, value in cls.defaults.items():
            merged.setdefault(key, value)
    return merged


def attack_folder(config: dict) -> Path:
    """``<attack_dir>/<DATASET>/<MODEL>/<ATTACK>``: attack.py's run folders and their ``latest`` pointer."""
    return Path(config["attack_dir"]) / config["dataset"] / config["model"] / str(config["attack"])


def target_model_path(config: dict) -> Path:
    """The checkpoint to defend: ``--model-path``, else the model of attack.py's latest finished run for this
    dataset/model/attack (``<attack folder>/latest/model.pth``; a pre-run-folder ``<attack folder>/model.pth``
    is still found). Returned absolute and resolved, so that the run records which file it defended."""
    if config["model_path"]:
        return Path(config["model_path"]).expanduser().resolve()
    root = attack_folder(config)
    latest = read_latest(root)
    if latest is not None and (latest / "model.pth").is_file():
        return latest / "model.pth"
    if (root / "model.pth").is_file():
        return (root / "model.pth").resolve()
    raise UserError(f"no trained model at {root / 'latest' / 'model.pth'}: run `python attack.py --dataset "
                    f"{config['dataset']} --attack {config['attack']}` first, or pass --model-path")


def load_target_model(config: dict, num_classes: int, log=None):
    """The model to defend, its checkpoint's meta data (``attack``: the attack config it was trained with,
    ``trigger``: the trigger tensors; both absent for a third-party checkpoint) and its path."""
    path = target_model_path(config)
    classifier, meta = load_classifier(path, config["model"], config["dataset"], num_classes, config["normalization"],
                                       config.get("mean"), config.get("std"), log=log)
    return classifier, meta, path


def poisoned_testset(config: dict, meta: dict, test, image_size: int, log=None):
    """The poisoned test set of the attack that produced the model, that attack's config and its trigger
    tensors; (None, ...) when no attack is known. The trigger comes from the tensors saved in the model's checkpoint; only a
    third-party model (no saved trigger) gets one from ``--trigger`` or, failing that, from the seed."""
    attack_config, tensors = meta.get("attack"), meta.get("trigger")
    if attack_config is None:
        if config["attack"] in (None, "Benign", "none") or config["tlabel"] is None and not config["trigger"]:
            return None, None, None
        attack_config = {"attack": attack_class(config["attack"]).name, "y_target": config["tlabel"] or 0, "seed": 0,
                         "trigger_path": config["trigger"]}
    if attack_config["attack"] == "Benign":
        return None, attack_config, None
    if config["trigger"]:  # the user's trigger file wins over a saved one
        attack_config, tensors = {**attack_config, "trigger_path": config["trigger"]}, None
    elif not tensors and log:
        log(f"note: the checkpoint holds no trigger tensors, so the {attack_config['attack']} trigger is rebuilt from "
            f"its seed ({attack_config.get('seed', 0)}); pass --trigger if the model was trained with another one")
    attack = restore_attack(attack_config, tensors, image_size=image_size)
    return attack.poison_test(test), attack_config, attack.trigger_tensors()


def default_out(defense: str) -> str:
    return "refine_res" if defense_class(defense).name == "REFINE" else "defense_res"


def defense_root(config: dict) -> Path:
    """Holds one folder per run of the config's defense and the ``latest`` pointer:
    ``<out>/<DATASET>/<MODEL>/<ATTACK>/<DEFENSE>``; REFINE: ``<out>/<DATASET>/<MODEL>/<ATTACK>`` (the official
    layout). ``out`` None: refine_res for REFINE, defense_res for the others."""
    name = defense_class(config["defense"]).name
    root = Path(config["out"] or default_out(name)) / config["dataset"] / config["model"] / str(config["attack"])
    return root if name == "REFINE" else root / name


def _defender_data(config: dict, train, defense_cls):
    """The defender's share of the training set (``data_fraction``, a seeded subset); labels are kept only for
    a defense that reads them (REFINE and T-MR get -1 placeholders: they must never see true labels)."""
    count = int(round(config["data_fraction"] * len(train)))
    if not 0 < count <= len(train):
        raise UserError(f"--data-fraction {config['data_fraction']} of {len(train)} training images is "
                        f"{count} images; use a larger fraction (at most 1)")
    data = train.subset(seeded_subset(len(train), count, config["seed"]))
    if not defense_cls.labelled:
        data = type(data)(data.images, torch.full_like(data.labels, -1), data.classes, data.source)
    return data


def write_preview(path, deployed, defense, test, poisoned_test, seed: int, count: int = 10) -> Path:
    """A PNG grid, one column per test image: clean; the defense's own rows (BTI-DBF: inverted G(x)); poisoned;
    the poisoned image after the deployed input transform (REFINE's T(x), the purified image, ShrinkPad's)."""
    from .attacks.base import write_png
    from .data import to_float

    clean = to_float(test.images[:count])
    rows = [clean, *defense.preview_rows(clean).values()]
    if poisoned_test is not None:
        poisoned = to_float(poisoned_test.images[:count])
        torch.manual_seed(seed)
        with torch.inference_mode():
            rows += [poisoned, deployed.transform(poisoned)]
    grid = torch.cat([torch.cat(list(row.float().clamp(0, 1)), dim=2) for row in rows], dim=1)
    return write_png(grid, path, upscale=max(1, 96 // clean.shape[-1]))


def run_defense(config: dict) -> dict:
    """Defends a trained classifier as ``config`` says; returns ``{'no_defense': metrics, 'defense': metrics,
    'detection': dict}`` (metrics: BA/ASR with exact counts).

    The run folder is ``<preset>_seed<seed>_<hash8>`` (or ``--run-name``), where the hash covers the whole
    configuration and the SHA-256 of the defended model file (see core.runlog). Every check - options, model,
    data, trigger, an existing run in the way - comes before the first write.
    """
    defense_cls = defense_class(config.get("defense") or "REFINE")
    config = validate("defense", {**config, "defense": defense_cls.name}, extra_rules=defense_cls.checks)
    config["attack"] = canonical_name(config["attack"]) or config["attack"]  # PhysicalBA -> Physical
    num_classes, image_size = dataset_info(config["dataset"])
    device = resolve_device(config["device"])
    config = {**config, "eval_batch_size": config["eval_batch_size"] or default_eval_batch_size(device),
              "data_root": str(Path(config["data_root"]).expanduser().resolve()),
              "attack_dir": str(Path(config["attack_dir"]).expanduser().resolve()),
              "out": str(Path(config["out"] or default_out(defense_cls.name)).expanduser().resolve())}
    notes = []  # log lines from before the run folder exists
    classifier, meta, model_path = load_target_model(config, num_classes, notes.append)
    config = {**config, "model_path": str(model_path),  # the file defended, absolute (its hash is in the settings)
              **{k: classifier.spec[k] for k in ("normalization", "mean", "std")}}  # what is used
    ensure_data(config, notes.append)
    train = load_split(config["dataset"], "train", config["data_root"], config["allow_embedded"])
    test = load_split(config["dataset"], "test", config["data_root"], config["allow_embedded"])
    if config["test_size"]:
        test = evaluation_subset(test, config["test_size"])
    data = _defender_data(config, train, defense_cls)
    defense = defense_cls(**{k: config[k] for k in defense_cls.defaults})
    poisoned_test, attack_config, trigger = poisoned_testset(config, meta, test, image_size, notes.append)
    settings = run_settings(config, data={"train": describe_split(train), "test": describe_split(test)})
    folder = defense_root(config) / (config["run_name"] or run_name(config, settings))
    state_path = folder / "train_state.pth"
    status = check_run_folder(folder, settings, "defended_model.pth", config["fresh"])
    if status == "finished":
        metrics = report_finished(folder, label=f"{defense_cls.name} ")
        return {"no_defense": metrics.get("no_defense"), "defense": metrics.get("final", {}),
                "detection": metrics.get("detection", {})}
    if status == "resume" and state_path.is_file():
        EpochState.read(state_path, settings)  # a damaged state file is named before anything is written

    # -- every check passed: from here on the run writes into its folder ------------------------------
    run = start_run(folder, status, settings, config, notes,
                    discard=("train_state.pth", "finetune_state.pth", "defended_model.pth"),
                    header=f"{defense_cls.name}: defending {model_path} ({classifier.spec['model']} width "
                           f"{classifier.spec['width']}) on {config['dataset']}, device {device}, output {folder}")
    run.log(f"normalization inside the model: {config['normalization']} (mean {config['mean']}, std {config['std']})")
    run.log(f"data: {train.source}; {len(data)} {'labelled' if defense_cls.labelled else 'unlabeled'} images "
            f"for the defense")
    run.log(f"data: {test.source}; {len(test)} test images")
    if poisoned_test is None:
        run.log("no attack known for this model: ASR is not measured (pass --attack and --trigger for a third-party model)")

    original = ba_asr(classifier.to(device), test, poisoned_test, config["eval_batch_size"], device)
    run.update_metrics(no_defense=original, attack=attack_config)
    run.log(f"no defense (original model): {format_metrics(original)}")

    def evaluate(deployed, epoch: int) -> dict:
        torch.manual_seed(config["seed"])  # random transforms (ShrinkPad, purifier noise) evaluate reproducibly
        metrics = ba_asr(deployed, test, poisoned_test, config["eval_batch_size"], device)
        run.append_metric("evaluations", {"epoch": epoch, **metrics})
        run.log(f"{defense_cls.name} after epoch {epoch}: {format_metrics(metrics)}")
        return metrics

    ctx = FitContext(device=device, seed=config["seed"], amp=config["amp"], log=run.log, work_dir=folder,
                     fingerprint=settings, evaluate=evaluate, eval_every=config["eval_every"],
                     compile=config["compile"], fused=config["fused"])
    started = time.time()
    try:
        deployed = defense.fit(classifier, data, ctx)
    except DivergedError as exc:
        run.log(f"stopped: {exc}; no defended model saved, the last good epoch stays resumable", echo=False)
        raise
    done = [e for e in run.metrics.get("evaluations", []) if e["epoch"] == config.get("epochs")]
    if done:
        final = {k: v for k, v in done[-1].items() if k != "epoch"}
    else:
        torch.manual_seed(config["seed"])
        final = ba_asr(deployed, test, poisoned_test, config["eval_batch_size"], device)
    deployed = deployed.cpu().eval()
    if hasattr(deployed.output_map, "permutation"):
        atomic_text(folder / "label_mapping.json", json.dumps(
            {"permutation": deployed.output_map.permutation.tolist(),
             "meaning": "the score of original class j is moved to position permutation[j]"}, indent=2))
    write_preview(folder / "preview.png", deployed, defense, test, poisoned_test, config["seed"])
    save_deployed(folder / "defended_model.pth", deployed, defense=defense_cls.name, dataset=config["dataset"],
                  attack=attack_config, trigger=trigger, source_model=str(model_path), final_metrics=final,
                  detection=defense.detection)
    wall = time.time() - started
    run.update_metrics(final=final, detection=defense.detection, parts=deployed.describe(),
                       device=device_name(device), train_wall_seconds_this_call=round(wall, 1))
    if defense.detection:
        run.log(f"{defense_cls.name} detection: {json.dumps(defense.detection)[:300]}")
    finish_run(folder, settings)
    run.log(f"done in {wall / 60:.1f} min: no defense {format_metrics(original)} -> {defense_cls.name} "
            f"{format_metrics(final)}; defended model at {folder / 'defended_model.pth'}")
    return {"no_defense": original, "defense": final, "detection": defense.detection}


def evaluate_run(run_folder, data_root: str = "data", device="auto", allow_embedded: bool = False,
                 batch_size: int | None = None) -> dict:
    """BA/ASR of a saved defense on the benign and poisoned test sets. ``run_folder``: a run folder, its
    ``defended_model.pth``, or the folder above the runs (then its ``latest`` run is evaluated)."""
    folder = Path(run_folder)
    if folder.is_dir() and not (folder / "defended_model.pth").exists() and read_latest(folder) is not None:
        folder = read_latest(folder)  # refine_res/<DATASET>/<MODEL>/<ATTACK>: its latest run
    path = folder / "defended_model.pth" if folder.is_dir() else folder
    folder = path.parent
    model, meta = load_deployed(path)
    dataset = meta.get("dataset", "CIFAR10")
    _, image_size = dataset_info(dataset)
    saved = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
    test = load_split(dataset, "test", data_root, allow_embedded or saved.get("allow_embedded", False))
    if saved.get("test_size"):  # the run's own test subset, so that its final numbers are reproduced
        test = evaluation_subset(test, saved["test_size"])
    poisoned_test, _, _ = poisoned_testset({**COMMON, **saved}, meta, test, image_size)
    device = resolve_device(device)
    torch.manual_seed(saved.get("seed", 0))  # random transforms: the same draws as the run's own evaluation
    return ba_asr(model.to(device), test, poisoned_test, batch_size, device)
