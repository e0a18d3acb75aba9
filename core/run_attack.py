"""The job behind ``attack.py``: poison the data, train the classifier, evaluate, save everything."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from .adaptive_attack import ADAPTIVE, SUFFIX, adaptive_finetune, code_run, is_adaptive, without_adaptive
from .attacks import ATTACKS, POISONING, attack_class, build_attack
from .checkpoint import atomic_save, load_classifier, save_classifier
from .checks import choice, integer, text
from .data import DATA, dataset_info, evaluation_subset, load_split, seeded_subset
from .download import ensure_data
from .errors import UserError
from .jobs import MODEL, Job, checked_config, run_job, run_settings
from .metrics import timed_ba_asr
from .models import build_classifier, resolve_normalization
from .runlog import (RunLog, describe_split, format_metrics, latest_run, method_versions, read_metrics, run_name,
                     tensors_sha256)
from .settings import RUN, Setting, flag_of, merge, owners_of, shown
from .train import CLASSIFIER_RECIPE, device_name, train_classifier
from .defenses.base import STATE_DIR


def attack_job_settings() -> dict[str, Setting]:
    """Every setting of an attack.py run: how it runs, the data, the classifier and its training recipe (the
    paper's: the built-in defaults), the poisoning, and each registered attack's own settings (unset: None,
    meaning that attack's default; a setting of another attack than the one run is refused)."""
    own = {}
    for key, owners in owners_of(ATTACKS.values()).items():
        declared = attack_class(owners[0]).settings[key]
        default = f" (default {shown(declared.default)})" if declared.default is not None else ""
        own[key] = replace(declared, default=None, help=declared.help + default,
                           check=declared.check.or_unset() if declared.check else None)
    names = [*ATTACKS.names(), *ATTACKS.aliases]
    poisoning = {**POISONING, "attack": replace(POISONING["attack"], check=choice(names))}
    return merge(RUN, {"out": Setting("attack", "output root", text(), "run")}, DATA,
                 {"train_size": Setting(None, "seeded, class-balanced training subset (default: the whole split)",
                                        integer(1, optional=True), "data")},
                 MODEL, CLASSIFIER_RECIPE, poisoning, own, ADAPTIVE)


def attack_root(config: dict) -> Path:
    """``<out>/<DATASET>/<MODEL>/<ATTACK>``: holds one folder per run (see core.runlog) and the ``latest`` pointers;
    ``<ATTACK>-adaptive`` for the adaptive attack (core.adaptive_attack), whose models never become the normal
    attack's ``latest``."""
    name = config["attack"] + (SUFFIX if is_adaptive(config) else "")
    return Path(config["out"]) / config["dataset"] / config["model"] / name


def load_data(config: dict, log, deferred_writes: list | None = None):
    """Benign train/test splits of the config's data set (subsets when train_size/test_size are set); the
    decoded-data cache is written now or appended to ``deferred_writes`` (see :func:`core.data.load_split`)."""
    train, test = (load_split(config["dataset"], split, config["data_root"], config["allow_embedded"], deferred_writes)
                   for split in ("train", "test"))
    if config.get("train_size"):
        train = train.subset(seeded_subset(len(train), config["train_size"], config["seed"], train.labels))
    if config.get("test_size"):
        test = evaluation_subset(test, config["test_size"])
    log(f"data: {train.source}; using {len(train)} training images")
    log(f"data: {test.source}; using {len(test)} test images")
    return train, test


def attack_settings(config: dict) -> dict:
    """The config with the attack's canonical name and only its own settings: another attack's setting that is
    set (``--alpha`` with WaNet) is refused; an attack that needs a reference model (LC: a clean one) gets the
    path of the latest finished run of its ``reference_attack``."""
    cls = attack_class(config["attack"])
    config = {**config, "attack": cls.name}
    for key, owners in owners_of(ATTACKS.values()).items():
        if key not in cls.settings:
            if config.get(key) is not None:
                raise UserError(f"{flag_of(key)} is a setting of {', '.join(owners)}, not of {cls.name}")
            config.pop(key, None)
    if cls.reference_attack and not config.get(cls.reference_setting):
        reference = attack_root({**config, "attack": cls.reference_attack})
        latest = latest_run(reference, config.get("preset"), "model.pth")
        if latest is None:
            preset = f" --preset {config['preset']}" if config.get("preset") else ""
            raise UserError(f"{cls.name} needs a model of {config['dataset']}/{config['model']} trained by "
                            f"{cls.reference_attack} and none was found at {reference / 'latest' / 'model.pth'}: run "
                            f"`python attack.py --dataset {config['dataset']} --model {config['model']} --attack "
                            f"{cls.reference_attack}{preset}` first, or pass {flag_of(cls.reference_setting)} PATH")
        config[cls.reference_setting] = str((latest / "model.pth").resolve())
    return config


def start_from(model, reference, path) -> None:
    """Copies the reference classifier's network weights (BatchNorm statistics included) into ``model``'s; its
    normalization stays ``model``'s own. Another width or architecture is a UserError naming ``path``."""
    try:
        model.net.load_state_dict(reference.net.state_dict())
    except RuntimeError as exc:
        raise UserError(f"the model cannot start from {path}: its weights do not fit this "
                        f"{model.spec['model']} of width {model.spec['width']} ({str(exc).splitlines()[0]})") from None


class AttackJob(Job):
    """Trains a (backdoored or benign) classifier as ``config`` says (see :func:`attack_job_settings`)."""

    def plan(self) -> None:
        job_settings = attack_job_settings()
        config, device = checked_config(self.config, job_settings, folders=("data_root", "out"))
        # the adaptive attack fine-tunes the model of the normal attack of the same settings: that run's job
        self.normal = AttackJob(without_adaptive(self.config)) if is_adaptive(config) else None
        if self.normal is None:
            config, job_settings = without_adaptive(config), without_adaptive(job_settings)
        else:
            self.normal.plan()  # its checks and its folder, before anything is written
        self.device = device
        num_classes, image_size = dataset_info(config["dataset"])
        config = {**config, **resolve_normalization(config["normalization"], config.get("mean"), config.get("std"))}
        config = attack_settings(config)  # the attack's canonical name, its own settings only
        cls = attack_class(config["attack"])
        ensure_data(config, self.notes.append)
        self.attack = attack = build_attack(
            config["attack"], y_target=config["y_target"], poisoned_rate=config["poisoned_rate"], seed=config["seed"],
            image_size=image_size, trigger_path=config["trigger"], **{k: config[k] for k in cls.settings})
        if cls.reference_attack:
            reference, _ = load_classifier(config[cls.reference_setting], config["model"], config["dataset"],
                                           num_classes, log=self.notes.append)
            self.notes.append(f"reference model for {cls.name} ({cls.reference_attack}): "
                              f"{config[cls.reference_setting]}")
            attack.use_reference(reference.to(device), attack_root(config) / "pgd_cache", device)
        config.update({k: v for k, v in attack.config().items() if k in config})  # the values used (e.g. wanet_k)
        torch.manual_seed(config["seed"])
        self.model = build_classifier(config["model"], config["dataset"], num_classes, config["width"],
                                      config["normalization"], config["mean"], config["std"])
        if cls.reference_attack and attack.starts_from_reference:  # a setting of the attack: in the run hash
            start_from(self.model, reference, config[cls.reference_setting])
            self.notes.append(f"{cls.name}'s model starts from the weights of the reference model")
        self.train, self.test = load_data(config, self.notes.append, self.deferred_writes)
        attack.plan(self.train.labels)  # an impossible plan (rate too high for the candidates) is refused now
        self.config = config
        self.declared = job_settings
        self.settings = run_settings(config, job_settings, data={"train": describe_split(self.train),
                                                                 "test": describe_split(self.test)},
                                     trigger_sha256=tensors_sha256(attack.trigger_tensors()),
                                     method_version=method_versions(cls, *self.adaptive_methods()))
        self.folder = attack_root(config) / run_name(config, self.settings)
        self.product = "model.pth"
        self.header = (f"attack.py: {config['attack']} on {config['dataset']} / {config['model']} (width "
                       f"{config['width']}), device {device}, output {self.folder}")

    def adaptive_methods(self) -> tuple:
        """The code the adaptive fine-tuning runs besides the attack's (none for the normal attack)."""
        return () if self.normal is None else code_run()

    def execute(self, run: RunLog) -> str:
        config, attack, model, train, test, device = (self.config, self.attack, self.model, self.train, self.test,
                                                      self.device)
        folder = run.folder
        poisoned_train, plan = attack.poison_train(train)  # LC runs (or reuses) its PGD here
        poisoned_test = attack.poison_test(test) if attack.poisons_data else None
        attack.save_trigger(folder)
        if attack.poisons_data:
            attack.save_preview(test, folder / "preview.png")
        atomic_save({"payload": plan.payload, "cover": plan.cover}, folder / "poisoned_indices.pth")
        cover = f" and {len(plan.cover)} cover samples (trigger, true label)" if len(plan.cover) else ""
        run.log(f"poisoned {len(plan.payload)} of {len(train)} training images{cover} "
                f"(rate {attack.poisoned_rate}, target {attack.y_target})")
        started = time.time()

        speed = {}

        def evaluate(epoch: int) -> dict:
            metrics, speed["model"] = timed_ba_asr(model, test, poisoned_test, config["eval_batch_size"], device)
            run.append_metric("evaluations", {"epoch": epoch, **metrics})
            run.log(f"eval after epoch {epoch}: {format_metrics(metrics)}")
            return metrics

        extra_meta = {}
        if self.normal is None:
            train_classifier(model, poisoned_train, **{k: config[k] for k in CLASSIFIER_RECIPE}, device=device,
                             amp=config["amp"], seed=config["seed"], state_path=folder / STATE_DIR / "train_state.pth",
                             fingerprint=self.settings, evaluate=evaluate, eval_every=config["eval_every"],
                             log=run.log, **attack.hook_arguments(plan, len(train)),
                             compile=config["compile"], fused=config["fused"])
            last_epoch = config["epochs"]
        else:
            extra_meta = self.fine_tune_adaptively(run, poisoned_train, plan, evaluate)
            last_epoch = config["adaptive_epochs"]
        done = [e for e in run.metrics.get("evaluations", []) if e["epoch"] == last_epoch]
        final = {k: v for k, v in done[-1].items() if k != "epoch"} if done else evaluate(last_epoch)
        save_classifier(folder / "model.pth", model.cpu(), attack=attack.config(), trigger=attack.trigger_tensors(),
                        dataset=config["dataset"], data=train.source, final_metrics=final, **extra_meta)
        run.update_metrics(final=final, attack=attack.config(), data=train.source, device=device_name(device),
                           train_wall_seconds_this_call=round(time.time() - started, 1), inference=speed,
                           **extra_meta)
        if final.get("ASR", 100.0) < 50:
            run.log(f"warning: ASR is only {final['ASR']:.2f}%: the backdoor did not take, so a defense has nothing to "
                    f"remove; train longer (--epochs) or on more data (the embedded sample needs more epochs than the "
                    f"full CIFAR-10)")
        return f"{format_metrics(final)}; model at {folder / 'model.pth'}"


    def fine_tune_adaptively(self, run: RunLog, poisoned_train, plan, evaluate) -> dict:
        """The adaptive attack (core.adaptive_attack): the normal attack's model (trained first when it has no
        finished run), fine-tuned by L_b + γ·L_refine. Returns what model.pth and metrics.json record of it."""
        config = self.config
        normal_folder = run_job(self.normal)
        run.log(f"adaptive attack: fine-tuning the model of {normal_folder} (γ {config['adaptive_gamma']}, "
                f"{config['adaptive_epochs']} epochs at lr {config['adaptive_lr']}, F's BatchNorm in the simulated "
                f"REFINE pass: {config['adaptive_bn']})")
        path = normal_folder / "model.pth"
        normal, _ = load_classifier(path, config["model"], config["dataset"], self.model.spec["num_classes"])
        start_from(self.model, normal, path)
        normal_metrics = read_metrics(normal_folder)["final"]

        def record(epoch: int, means: dict) -> None:
            run.append_metric("adaptive_losses", {"epoch": epoch, **means})

        adaptive_finetune(self.model, poisoned_train, gamma=config["adaptive_gamma"], epochs=config["adaptive_epochs"],
                          lr=config["adaptive_lr"], unet_channels=config["adaptive_unet_channels"],
                          batch_size=config["batch_size"], momentum=config["momentum"],
                          weight_decay=config["weight_decay"], augment=config["augment"], device=self.device,
                          amp=config["amp"], seed=config["seed"], bn=config["adaptive_bn"],
                          **self.attack.hook_arguments(plan, len(poisoned_train)),
                          state_path=run.folder / STATE_DIR / "adaptive_state.pth", fingerprint=self.settings,
                          evaluate=evaluate, on_epoch_end=record, log=run.log)
        return {"adaptive": {"gamma": config["adaptive_gamma"], "epochs": config["adaptive_epochs"],
                             "lr": config["adaptive_lr"], "unet_channels": config["adaptive_unet_channels"],
                             "bn": config["adaptive_bn"], "normal_model": str(path), "normal_final": normal_metrics}}


def run_attack(config: dict) -> Path:
    """Trains a (backdoored or benign) classifier as ``config`` says; returns its run folder (model.pth,
    metrics.json with the final BA/ASR, log.txt, ...). Everything that can fail for a reason the user can fix
    is checked before the first file is written, so a refused run changes nothing."""
    return run_job(AttackJob(config))
