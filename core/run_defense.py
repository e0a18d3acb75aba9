"""The job behind ``defend.py`` and ``refine.py``: defend a trained classifier with one defense, evaluate,
save the deployed model.

One job for every registered defense (core.defenses.DEFENSES): it finds the model to defend and the poisoned
test set of its attack, takes the defender's share of the training set, runs ``Defense.fit`` with a resumable
context and evaluates the deployed model with the same metrics. Outputs:
``<out>/<DATASET>/<MODEL>/<ATTACK>/<DEFENSE>/<run>`` (REFINE keeps the official layout,
``refine_res/<DATASET>/<MODEL>/<ATTACK>/<run>``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .attacks import attack_class, canonical_name, restore_attack
from .attacks.base import write_png
from .checkpoint import load_classifier
from .checks import choice, existing_file, integer, name, text
from .config import read_yaml
from .data import DATA, dataset_info, evaluation_subset, load_split, seeded_subset, to_float
from .defenses import DEFENSES, FitContext, defense_class, load_deployed, save_deployed
from .download import ensure_data
from .errors import UserError
from .jobs import MODEL, Job, checked_config, run_job, run_settings
from .metrics import ba_asr, timed_ba_asr
from .models import NORMALIZATION_HELP, NORMALIZATIONS
from .runlog import RunLog, describe_split, format_metrics, latest_run, method_versions, read_latest, run_name
from .settings import RUN, Setting, defaults, flatten, merge
from .train import device_name, resolve_device

# The model to defend and where the run goes: what every defense run has, whatever the defense.
TARGET = {
    "defense": Setting("REFINE", "the defense (defend.py --list)", text(), "run"),
    "out": Setting(None, "output root (default defense_res/; REFINE: refine_res/)", text(optional=True), "run",
                   aliases=("--refine_res",)),
    "run_name": Setting(None, "run folder name (default <preset>_seed<seed>_<hash8>)", name(optional=True), "run"),
    "attack": Setting("BadNets", "attack name: picks <attack-dir>/<DATASET>/<MODEL>/<ATTACK>/latest/model.pth and "
                                 "its trigger", name(optional=True), "data"),
    "attack_dir": Setting("attack", "root of attack.py's outputs", text(), "run"),
    "model_path": Setting(None, "checkpoint to defend (any source; default: the attack's latest run)",
                          existing_file(), "data", aliases=("--model_path",)),
    "model": MODEL["model"],
    "defense_data_root": Setting(None, "where the defense's own training images come from: a data root or image-folder "
                                       "tree with a train/<class>/ split of the same classes (CINIC-10's own layout "
                                       "works), e.g. data of another distribution (the paper's Table 9); default: "
                                       "--data-root's training set. The evaluation always uses --data-root",
                                 text(optional=True), "data"),
    "y_target": Setting(None, "target label, for third-party models", integer(0, optional=True), "data",
                        aliases=("--tlabel",)),
    "trigger": Setting(None, "trigger file, for third-party models", existing_file(), "data"),
    "normalization": Setting(None, f"input normalization of a raw third-party state_dict (a model saved by attack.py "
                                   f"records its own); {NORMALIZATION_HELP}", choice(NORMALIZATIONS, optional=True),
                             "train"),
    "mean": MODEL["mean"],
    "std": MODEL["std"],
}


# What every defense run has: how it runs, the data, the model to defend.
COMMON = merge(RUN, DATA, TARGET)


def defense_job_settings(cls) -> dict[str, Setting]:
    """Every setting of a run of the defense class ``cls``: :data:`COMMON` and the defense's own declared ones."""
    return merge(COMMON, cls.settings)


def all_defense_settings() -> dict[str, Setting]:
    """Every defense's settings (key -> the first declaration): defend.py's flags."""
    merged: dict[str, Setting] = {}
    for cls in DEFENSES.values():
        for key, setting in cls.settings.items():
            merged.setdefault(key, setting)
    return merged


def defaults_for(defense: str) -> dict:
    """The built-in configuration of a run of ``defense``."""
    cls = defense_class(defense)
    return {**defaults(defense_job_settings(cls)), "defense": cls.name}


def attack_folder(config: dict) -> Path:
    """``<attack_dir>/<DATASET>/<MODEL>/<ATTACK>``: attack.py's run folders and their ``latest`` pointer."""
    return Path(config["attack_dir"]) / config["dataset"] / config["model"] / str(config["attack"])


def target_model_path(config: dict) -> Path:
    """The checkpoint to defend: ``--model-path``, else the model of attack.py's latest finished run for this
    dataset/model/attack of the same preset (``<attack folder>/latest-<preset>``), else of any preset
    (``<attack folder>/latest``). Returned absolute and resolved, so that the run records which file it defended."""
    if config["model_path"]:
        return Path(config["model_path"]).expanduser().resolve()
    root = attack_folder(config)
    latest = latest_run(root, config.get("preset"), "model.pth")
    if latest is not None:
        return latest / "model.pth"
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
        if config["attack"] in (None, "Benign", "none") or config["y_target"] is None and not config["trigger"]:
            return None, None, None
        attack_config = {"attack": attack_class(config["attack"]).name, "y_target": config["y_target"] or 0, "seed": 0,
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
    return defense_class(defense).output_root


def defense_root(config: dict) -> Path:
    """Holds one folder per run of the config's defense and the ``latest`` pointer:
    ``<out>/<DATASET>/<MODEL>/<ATTACK>/<DEFENSE>``, or ``<out>/<DATASET>/<MODEL>/<ATTACK>`` for a defense without
    ``own_folder`` (REFINE's official layout). ``out`` None: the defense's ``output_root``."""
    name = defense_class(config["defense"]).name
    root = Path(config["out"] or default_out(name)) / config["dataset"] / config["model"] / str(config["attack"])
    return root / name if defense_class(name).own_folder else root


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
    the poisoned image after the deployed input transform (REFINE's T(x), the purified image, ShrinkPad's).
    ``count`` columns at most: fewer when either test set is smaller."""
    count = min(count, len(test), len(poisoned_test) if poisoned_test is not None else count)
    clean = to_float(test.images[:count])
    rows = [clean, *defense.preview_rows(clean).values()]
    if poisoned_test is not None:
        poisoned = to_float(poisoned_test.images[:count])
        torch.manual_seed(seed)
        with torch.inference_mode():
            rows += [poisoned, deployed.transform(poisoned)]
    grid = torch.cat([torch.cat(list(row.float().clamp(0, 1)), dim=2) for row in rows], dim=1)
    return write_png(grid, path, upscale=max(1, 96 // clean.shape[-1]))


class DefenseJob(Job):
    """Defends a trained classifier as ``config`` says (see :func:`defense_job_settings`)."""

    def plan(self) -> None:
        cls = self.defense_cls = defense_class(self.config.get("defense") or "REFINE")
        job_settings = defense_job_settings(cls)
        config = {**self.config, "defense": cls.name, "out": self.config.get("out") or cls.output_root}
        config, device = checked_config(config, job_settings, folders=("data_root", "attack_dir", "out"))
        self.device = device
        config["attack"] = canonical_name(config["attack"]) or config["attack"]  # PhysicalBA -> Physical
        num_classes, image_size = dataset_info(config["dataset"])
        self.classifier, meta, model_path = load_target_model(config, num_classes, self.notes.append)
        config = {**config, "model_path": str(model_path),  # the file defended, absolute (its hash is in the settings)
                  **{k: self.classifier.spec[k] for k in ("normalization", "mean", "std")}}  # what is used
        ensure_data(config, self.notes.append)
        where = (config["data_root"], config["allow_embedded"], self.deferred_writes)  # cache written after checks
        train = load_split(config["dataset"], "train", *where)
        test = load_split(config["dataset"], "test", *where)
        if config["test_size"]:
            test = evaluation_subset(test, config["test_size"])
        if config["defense_data_root"]:
            config["defense_data_root"] = str(Path(config["defense_data_root"]).expanduser().resolve())
            own = load_split(config["dataset"], "train", config["defense_data_root"], False, self.deferred_writes)
            if list(own.classes) != list(train.classes):
                theirs, ours = (", ".join(map(str, split.classes[:12])) for split in (own, train))
                raise UserError(f"--defense-data-root {config['defense_data_root']}: its classes ({theirs}) are not "
                                f"--data-root's ({ours}); the defender's data need the same <class> folders")
        else:
            own = train
        self.train, self.test, self.defense_train = train, test, own
        self.data = _defender_data(config, own, cls)
        self.defense = cls(**{k: config[k] for k in cls.settings})
        self.defense.check(tuple(test.images.shape[1:]))  # e.g. ShrinkPad's pad size against the image size
        self.poisoned_test, self.attack_config, self.trigger = poisoned_testset(config, meta, test, image_size,
                                                                                self.notes.append)
        self.config = config
        self.declared = job_settings
        data = {"train": describe_split(train), "test": describe_split(test)}
        if own is not train:
            data["defense_train"] = describe_split(own)
        self.settings = run_settings(config, job_settings, data=data,
                                     method_version=method_versions(cls, self.attack_config and attack_class(
                                         self.attack_config["attack"])))
        self.folder = defense_root(config) / (config["run_name"] or run_name(config, self.settings))
        self.product, self.label = "defended_model.pth", f"{cls.name} "
        self.header = (f"{cls.name}: defending {model_path} ({self.classifier.spec['model']} width "
                       f"{self.classifier.spec['width']}) on {config['dataset']}, device {device}, output {self.folder}")

    def execute(self, run: RunLog) -> str:
        config, cls, device, test, poisoned_test = (self.config, self.defense_cls, self.device, self.test,
                                                    self.poisoned_test)
        folder, classifier, defense = run.folder, self.classifier, self.defense
        run.log(f"normalization inside the model: {config['normalization']} (mean {config['mean']}, std "
                f"{config['std']})")
        run.log(f"data: {self.defense_train.source}; {len(self.data)} {'labelled' if cls.labelled else 'unlabeled'} images "
                f"for the defense")
        run.log(f"data: {test.source}; {len(test)} test images")
        if poisoned_test is None:
            run.log("no attack known for this model: ASR is not measured (pass --attack and --trigger for a "
                    "third-party model)")
        original, speed = timed_ba_asr(classifier.to(device), test, poisoned_test, config["eval_batch_size"], device)
        speed = {"no_defense": speed}
        run.update_metrics(no_defense=original, attack=self.attack_config)
        run.log(f"no defense (original model): {format_metrics(original)}")
        final_seen = {}

        def evaluate(deployed, epoch: int, final: bool = False) -> dict:
            torch.manual_seed(config["seed"])  # random transforms (ShrinkPad, purifier noise) evaluate reproducibly
            metrics, speed["defended"] = timed_ba_asr(deployed, test, poisoned_test, config["eval_batch_size"], device)
            run.append_metric("evaluations", {"epoch": epoch, **metrics})
            run.log(f"{cls.name} after epoch {epoch}: {format_metrics(metrics)}")
            if final:
                final_seen["metrics"] = metrics
            return metrics

        ctx = FitContext(device=device, seed=config["seed"], amp=config["amp"], log=run.log, work_dir=folder,
                         fingerprint=self.settings, evaluate=evaluate, eval_every=config["eval_every"],
                         compile=config["compile"], fused=config["fused"],
                         measure=lambda model: ba_asr(model, test, poisoned_test, config["eval_batch_size"], device))
        started = time.time()
        deployed = defense.fit(classifier, self.data, ctx)
        final = final_seen.get("metrics")
        if final is None:  # a defense that evaluates nothing itself, or a run resumed after its last epoch
            torch.manual_seed(config["seed"])
            final, speed["defended"] = timed_ba_asr(deployed, test, poisoned_test, config["eval_batch_size"], device)
        deployed = deployed.cpu().eval()
        defense.write_outputs(deployed, folder)
        write_preview(folder / "preview.png", deployed, defense, test, poisoned_test, config["seed"])
        save_deployed(folder / "defended_model.pth", deployed, defense=cls.name, dataset=config["dataset"],
                      attack=self.attack_config, trigger=self.trigger, source_model=config["model_path"],
                      final_metrics=final, detection=defense.detection)
        run.update_metrics(final=final, detection=defense.detection, parts=deployed.describe(), report=defense.report,
                           device=device_name(device), train_wall_seconds_this_call=round(time.time() - started, 1),
                           inference=speed)
        if defense.detection:
            run.log(f"{cls.name} detection: {json.dumps(defense.detection)[:300]}")
        return (f"no defense {format_metrics(original)} -> {cls.name} {format_metrics(final)}; defended model at "
                f"{folder / 'defended_model.pth'}")


def run_defense(config: dict) -> Path:
    """Defends a trained classifier as ``config`` says; returns the run folder (defended_model.pth, metrics.json
    with ``no_defense``, ``final`` and ``detection``, log.txt, ...).

    The run folder is ``<preset>_seed<seed>_<hash8>`` (or ``--run-name``), where the hash covers the whole
    configuration and the SHA-256 of the defended model file (see core.runlog). Every check - options, model,
    data, trigger, an existing run in the way - comes before the first write.
    """
    return run_job(DefenseJob(config))


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
    saved = flatten(read_yaml(folder / "config.yaml")) if (folder / "config.yaml").is_file() else {}
    test = load_split(dataset, "test", data_root, allow_embedded or saved.get("allow_embedded", False))
    if saved.get("test_size"):  # the run's own test subset, so that its final numbers are reproduced
        test = evaluation_subset(test, saved["test_size"])
    poisoned_test, _, _ = poisoned_testset({**defaults(TARGET), **saved}, meta, test, image_size)
    device = resolve_device(device)
    torch.manual_seed(saved.get("seed", 0))  # random transforms: the same draws as the run's own evaluation
    return ba_asr(model.to(device), test, poisoned_test, batch_size, device)
