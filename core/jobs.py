"""The one job skeleton behind attack.py, refine.py and defend.py (and every cell of compare.py).

    folder = run_job(AttackJob(config))      # core.run_attack
    folder = run_job(DefenseJob(config))     # core.run_defense

A :class:`Job` says what is specific to its task in two steps: :meth:`Job.plan` checks everything and loads
what the run needs - option values, data, models, triggers - without writing anything, and names the run's
settings and folder; :meth:`Job.execute` trains, evaluates and saves the run's product. :func:`run_job` does
the rest, the same for every job: the folder's lock, what to do with a folder already there (new, resume,
--fresh, finished), the run's files, a diverging loss, the finish and the ``latest`` pointers. It returns the
run folder; callers read what they need from there.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import distributed
from .checkpoint import file_sha256, safe_load
from .checks import choice, integer
from .data import DATASETS, dataset_info
from .defenses.base import STATE_DIR
from .errors import DivergedError, UserError
from .models import MODEL_NAMES, NORMALIZATION_HELP, NORMALIZATIONS
from .runlog import (RunLog, canonical_json, check_run_folder, finish_run, other_versions_note, report_finished,
                     run_lock, start_run)
from .settings import Setting, check_value, file_keys, nest, validate
from .metrics import default_eval_batch_size
from .train import EpochState, resolve_device

# The classifier: architecture, width and input normalization (section train: they change what is computed).
MODEL = {
    "model": Setting("ResNet18", "architecture", choice(MODEL_NAMES), "train"),
    "width": Setting(64, "channel width of the CIFAR models (64 standard; 16 in the mini preset; at most 512, a "
                         "ResNet-18 of 2.8 GB)", integer(1, 512), "train"),
    "normalization": Setting("cifar10", f"input normalization inside the model; {NORMALIZATION_HELP}",
                             choice(NORMALIZATIONS), "train"),
    "mean": Setting(None, "explicit per-channel mean R,G,B (with --std; replaces --normalization)", None, "train"),
    "std": Setting(None, "explicit per-channel std R,G,B (with --mean)", None, "train"),
}


def run_settings(config: dict, declared: dict, **extra) -> dict:
    """The settings that define a run: every option of ``config`` but those of the ``run`` section (where and
    how fast it runs), input files by the SHA-256 of their bytes (a moved file is the same run, another file
    under the same name is not), plus ``extra`` (a description of the data found, the method's version),
    JSON-normalised (tuples become lists)."""
    settings = {k: v for k, v in config.items() if k not in declared or declared[k].section != "run"}
    for key in file_keys(declared) & set(settings):
        if settings[key] is not None:
            settings[key] = {"sha256": file_sha256(settings[key])}
    settings.update(extra)
    if distributed.world() > 1:  # each rank draws its own augmentation: N processes are another run than one
        settings["processes"] = distributed.world()
    return json.loads(canonical_json(settings))


def validate_job(config: dict, declared: dict) -> dict:
    """``config`` checked by the job's declarations, the data set first: target labels and subset sizes are
    bounded by its class count (each message names the flag and the range for this data set)."""
    dataset = check_value("dataset", declared["dataset"], config.get("dataset"))
    classes = DATASETS[dataset][0]
    bounded = {"y_target": integer(0, classes - 1, optional=True), "test_size": integer(classes, optional=True),
               "train_size": integer(classes, optional=True)}
    declared = {k: replace(s, check=bounded[k]) if k in bounded else s for k, s in declared.items()}
    config = validate({**config, "dataset": dataset}, declared)
    if config.get("model") == "ViT" and config.get("width", 4) % 4:  # embedding 3*width split over 4 heads
        raise UserError(f"--width must be a multiple of 4 for ViT, got {config['width']}")
    return config


def checked_config(config: dict, declared: dict, folders: tuple[str, ...]) -> tuple[dict, torch.device]:
    """What every job does first: ``config`` checked (:func:`validate_job`, and a .pth trigger file's tensor),
    the device resolved, the evaluation batch size filled in for it and the ``folders`` made absolute (the run
    folder records where it read and wrote from anywhere). Returns (config, device)."""
    config = validate_job(config, declared)
    if str(config.get("trigger") or "").endswith((".pth", ".pt")):
        check_trigger_tensor(config["trigger"], dataset_info(config["dataset"])[1])
    device = distributed.setup(resolve_device(config["device"]))  # under torchrun: joins the process group
    return {**config, "eval_batch_size": config["eval_batch_size"] or default_eval_batch_size(device),
            **{key: str(Path(config[key]).expanduser().resolve()) for key in folders}}, device


def check_trigger_tensor(path: str, size: int) -> None:
    """A .pth trigger must load (weights only) and hold a size x size pattern (C×H×W, H×W×C or H×W)."""
    blob = safe_load(path)  # a damaged trigger file is named now, not as a traceback later
    t = blob.get("pattern") if isinstance(blob, dict) else blob
    ok = isinstance(t, torch.Tensor) and (
        t.dim() == 2 and tuple(t.shape) == (size, size)
        or t.dim() == 3 and (tuple(t.shape[1:]) == (size, size) and t.shape[0] in (1, 3)
                             or tuple(t.shape[:2]) == (size, size) and t.shape[2] in (1, 3)))
    if not ok:
        got = f"a tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else "no tensor"
        raise UserError(f"--trigger must hold a {size}x{size} pattern of 1 or 3 channels (a tensor, or a dict with "
                        f"'pattern'), got {got} in {path}")
    if not torch.isfinite(t.float()).all():
        raise UserError(f"--trigger {path} holds NaN or infinite values; a trigger is an image (values in [0, 1] or "
                        f"0-255)")


@dataclass
class Job:
    """One run. :meth:`plan` fills ``settings`` (what the run computes: its hash names the folder), ``folder``,
    ``header`` (the log's first line) and ``notes`` (log lines gathered before the folder exists)."""

    config: dict
    product: str = ""  # the file whose presence (with run.json's 'finished') makes the run finished
    settings: dict = field(default_factory=dict)
    folder: Path | None = None
    header: str = ""
    notes: list = field(default_factory=list)
    label: str = ""  # put before BA/ASR when a finished run is reported
    declared: dict = field(default_factory=dict)  # the job's settings (core.settings.Setting), by key
    deferred_writes: list = field(default_factory=list)  # writes plan() wants (e.g. a data cache), done after checks

    def plan(self) -> None:
        raise NotImplementedError

    def execute(self, run: RunLog) -> str:
        """Trains, evaluates and saves the product into ``run.folder``; returns the closing log line."""
        raise NotImplementedError


def check_state(folder: Path, settings: dict) -> None:
    """Every resumable state file of an unfinished run must load and belong to these settings; a damaged or
    foreign one is named before anything is written."""
    for path in sorted((Path(folder) / STATE_DIR).rglob("*.pth")):
        EpochState.read(path, settings)


def run_job(job: Job) -> Path:
    """Runs ``job`` (see the module docstring) and returns its run folder. Every check comes before the first
    write; a finished run is reported, never retrained or overwritten; an identical run started at the same time
    is refused with one line (the folder's lock)."""
    job.plan()
    folder, config = Path(job.folder), job.config
    if folder.is_dir() and check_run_folder(folder, job.settings, job.product) == "finished":
        # a finished run never changes again: reported without the lock, so a read-only disk still reports it
        report_finished(folder, label=job.label, preset=config.get("preset"))
        return folder
    with run_lock(folder):
        status = check_run_folder(folder, job.settings, job.product, config.get("fresh", False))
        distributed.barrier()  # under torchrun: every rank has read the folder before rank 0 writes to it
        if status == "finished":
            report_finished(folder, label=job.label, preset=config.get("preset"))
            return folder
        if status == "resume":
            check_state(folder, job.settings)
        if status == "new":
            note = other_versions_note(folder, job.settings, job.product)
            if note:
                job.notes.append(note)
        if status == "fresh" and distributed.is_main():
            shutil.rmtree(folder / STATE_DIR, ignore_errors=True)
        for write in job.deferred_writes:  # every check has passed: the first write
            write()
        run = start_run(folder, status, job.settings, config, job.notes, discard=(job.product,), header=job.header,
                        written=nest(config, job.declared))
        run.log(f"processes: {distributed.describe()}", echo=False)
        distributed.barrier()  # and rank 0 has written it before any rank trains
        started = time.time()
        try:
            closing = job.execute(run)
        except DivergedError as exc:
            run.log(f"stopped: {exc}; nothing saved, the last good epoch stays resumable", echo=False)
            raise
        finish_run(folder, job.settings, preset=config.get("preset"))
        run.log(f"done in {(time.time() - started) / 60:.1f} min: {closing}")
    return folder
