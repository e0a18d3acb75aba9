"""Atomic checkpoint writing and safe, validated loading.

Checkpoints are plain dicts of tensors, numbers, strings and lists, so they load with
``torch.load(..., weights_only=True)``: a third-party checkpoint can never run code on load.
"""
from __future__ import annotations

import hashlib
import os
import pickletools
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import torch

from . import distributed
from .errors import UserError
from .models import NORMALIZATION_HELP, Classifier, build_classifier, dataset_kind, resolve_normalization

FORMAT = "refine-toolkit/classifier-v1"

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path, write: Callable) -> None:
    """Writes ``path`` through ``write(binary file)`` so that no reader ever sees half a file.

    The data goes to a uniquely named temporary file in the same folder (two runs writing the same
    path at once cannot collide), is flushed and fsync'ed, then renamed over ``path``; on any failure
    the temporary file is removed and ``path`` is left as it was. Under torchrun only rank 0 writes (the other
    ranks hold the same data: core.distributed).
    """
    if not distributed.is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (best effort: not every file system allows it)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_save(obj, path) -> None:
    """torch.save through :func:`atomic_write`: a crash or a parallel writer never leaves half a file."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _holds_pickled_code(path: Path, exc: Exception) -> bool:
    """True when a failed weights-only load was refused because of pickled objects (not a damaged file)."""
    text = str(exc)
    if "GLOBAL" in text or "allowed global" in text or "Unsupported global" in text:
        return True
    if zipfile.is_zipfile(path):
        return False  # a complete zip archive that fails otherwise is damaged inside
    try:  # a plain pickle: look for opcodes that import or call Python objects
        with open(path, "rb") as fh:
            return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(fh))
    except Exception:  # noqa: BLE001 - not even a readable pickle stream
        return False


def safe_load(path) -> dict:
    """``torch.load(weights_only=True)`` with one-line errors: missing, truncated/corrupt, or pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one first or pass the right path")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing: the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if path.stat().st_size and _holds_pickled_code(path, exc):
            raise UserError(f"{path} contains pickled Python objects, which are refused for safety (weights-only "
                            f"loading); re-save it with torch.save(model.state_dict())") from exc
        detail = re.split(r"(?<=\.)\s", str(exc).strip())[0][:100] if str(exc).strip() else "the file ends too early"
        if detail.startswith("Weights only load failed"):
            detail = "unreadable pickle data"
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {detail}); delete it and "
                        f"rerun the command that wrote it, or download it again") from exc


def save_classifier(path, classifier: Classifier, **meta) -> None:
    """Saves the bare network's state_dict (BackdoorBox names) with what is needed to rebuild it."""
    state = {k: v.detach().cpu() for k, v in classifier.net.state_dict().items()}
    atomic_save({"format": FORMAT, "spec": classifier.spec, "state_dict": state, "meta": meta}, path)


def classifier_from_spec(spec: dict) -> Classifier:
    """An untrained classifier of the architecture a saved ``spec`` describes."""
    dataset = "ImageNet50" if spec["dataset_kind"] == "imagenet" else "CIFAR10"
    return build_classifier(spec["model"], dataset, spec["num_classes"], spec["width"], spec["normalization"],
                            spec.get("mean"), spec.get("std"))  # older checkpoints: the name only


def _raw_state_dict(blob: dict) -> dict:
    """Finds the state_dict inside a third-party checkpoint and strips DataParallel's ``module.``."""
    for key in ("state_dict", "model", "net", "model_state_dict"):
        if isinstance(blob.get(key), dict):
            blob = blob[key]
            break
    if not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError("checkpoint holds no state_dict of tensors; save the model with torch.save(model.state_dict())")
    return {k.removeprefix("module."): v for k, v in blob.items()}


def _infer_width(state: dict, model: str) -> int:
    weight = state.get("conv1.weight")
    return int(weight.shape[0]) if model.startswith("ResNet") and weight is not None else 64


def load_classifier(path, model: str | None = None, dataset: str | None = None, num_classes: int | None = None,
                    normalization: str | None = None, mean=None, std=None,
                    log: Callable[[str], None] | None = None) -> tuple[Classifier, dict]:
    """Loads a classifier saved by this toolkit, or a raw state_dict (BackdoorBox / official REFINE code).

    Arguments that are given are checked against the checkpoint; a mismatch (other architecture, other
    class count) raises a UserError naming both. Returns ``(classifier in eval mode, meta dict)``.
    ``normalization`` (a name) or ``mean``/``std`` apply to a raw state_dict; a checkpoint of this toolkit
    records its own. ``log`` receives warnings (default: ``warnings.warn``).
    """
    if log is None:
        log = lambda message: warnings.warn(message, stacklevel=3)  # noqa: E731
    requested = resolve_normalization(normalization, mean, std) if normalization or mean is not None else None
    blob = safe_load(path)
    if blob.get("format") == FORMAT:
        spec, state, meta = blob.get("spec"), blob.get("state_dict"), blob.get("meta", {})
        needed = ("model", "dataset_kind", "num_classes", "width", "normalization")
        if not isinstance(spec, dict) or not isinstance(state, dict) or any(k not in spec for k in needed):
            lacking = [k for k in needed if not isinstance(spec, dict) or k not in spec]
            raise UserError(f"{path} is a damaged toolkit checkpoint: its spec lacks "
                            f"{', '.join(lacking) or 'nothing, but its state_dict is missing'}; save it again with "
                            f"attack.py or core.save_classifier")
        if model and model != spec["model"]:
            raise UserError(f"{path} holds a {spec['model']}, not a {model}; pass --model {spec['model']}")
        if num_classes and num_classes != spec["num_classes"]:
            raise UserError(f"{path} was trained for {spec['num_classes']} classes, not {num_classes}; "
                            f"use it with the dataset it was trained on")
        if dataset and spec["dataset_kind"] != dataset_kind(dataset):
            raise UserError(f"{path} is a {spec['dataset_kind']} model and cannot be used on {dataset}")
        saved = resolve_normalization(spec["normalization"], spec.get("mean"), spec.get("std"))
        if requested and requested != saved:
            log(f"note: {path} records its own normalization ({saved['normalization']}, mean {saved['mean']}, "
                f"std {saved['std']}), which is used; --normalization/--mean/--std only apply to raw state_dicts")
    else:
        if not (model and dataset):
            raise UserError(f"{path} is a raw state_dict: pass --model and --dataset so it can be rebuilt")
        state, meta = _raw_state_dict(blob), {}
        head = next((v for k, v in state.items() if k.endswith(("linear.weight", "fc.weight", "classifier.weight",
                                                                  "head.weight"))), None)
        classes = int(head.shape[0]) if head is not None else num_classes
        if num_classes and classes != num_classes:
            raise UserError(f"{path} has {classes} output classes, but {dataset} has {num_classes}")
        spec = {"model": model, "dataset_kind": dataset_kind(dataset),
                "num_classes": classes or 10, "width": _infer_width(state, model),
                **(requested or resolve_normalization("none"))}
        if requested is None:
            log(f"warning: {path} is a raw state_dict and no --normalization (or --mean/--std) was given, so no "
                f"input normalization is assumed (images in [0, 1] go straight into the network); "
                f"{NORMALIZATION_HELP}")
    classifier = classifier_from_spec(spec)
    try:
        classifier.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = str(exc).splitlines()[1:3]
        raise UserError(f"{path} does not fit a {spec['model']} (width {spec['width']}, {spec['num_classes']} "
                        f"classes): {' '.join(s.strip() for s in missing)[:300]}; pass the right --model") from exc
    broken = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
    if broken:  # every prediction would be NaN: a defense would "diverge" on it, an evaluation mean nothing
        raise UserError(f"{path} holds NaN or infinite weights ({', '.join(broken[:3])}"
                        f"{', ...' if len(broken) > 3 else ''}); it is no usable model")
    return classifier.eval(), meta
