"""Atomic checkpoint writing and safe, validated loading.

Checkpoints are plain dicts of tensors, numbers, strings and lists, so they load with
``torch.load(..., weights_only=True)``: a third-party checkpoint can never run code on load.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError
from .models import Classifier, build_classifier, dataset_kind

FORMAT = "refine-toolkit/classifier-v1"


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def safe_load(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one first or pass the right path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot load {path} as a weights-only PyTorch checkpoint ({type(exc).__name__}): "
                        f"re-save it as a plain state_dict") from exc


def save_classifier(path, classifier: Classifier, **meta) -> None:
    """Saves the bare network's state_dict (BackdoorBox names) with what is needed to rebuild it."""
    state = {k: v.detach().cpu() for k, v in classifier.net.state_dict().items()}
    atomic_save({"format": FORMAT, "spec": classifier.spec, "state_dict": state, "meta": meta}, path)


def classifier_from_spec(spec: dict) -> Classifier:
    """An untrained classifier of the architecture a saved ``spec`` describes."""
    dataset = "ImageNet50" if spec["dataset_kind"] == "imagenet" else "CIFAR10"
    return build_classifier(spec["model"], dataset, spec["num_classes"], spec["width"], spec["normalization"])


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
                    normalization: str | None = None) -> tuple[Classifier, dict]:
    """Loads a classifier saved by this toolkit, or a raw state_dict (BackdoorBox / official REFINE code).

    Arguments that are given are checked against the checkpoint; a mismatch (other architecture, other
    class count) raises a UserError naming both. Returns ``(classifier in eval mode, meta dict)``.
    """
    blob = safe_load(path)
    if blob.get("format") == FORMAT:
        spec, state, meta = blob["spec"], blob["state_dict"], blob.get("meta", {})
        if model and model != spec["model"]:
            raise UserError(f"{path} holds a {spec['model']}, not a {model}; pass --model {spec['model']}")
        if num_classes and num_classes != spec["num_classes"]:
            raise UserError(f"{path} was trained for {spec['num_classes']} classes, not {num_classes}; "
                            f"use it with the dataset it was trained on")
        if dataset and spec["dataset_kind"] != dataset_kind(dataset):
            raise UserError(f"{path} is a {spec['dataset_kind']} model and cannot be used on {dataset}")
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
                "normalization": normalization or "none"}
    classifier = classifier_from_spec(spec)
    try:
        classifier.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = str(exc).splitlines()[1:3]
        raise UserError(f"{path} does not fit a {spec['model']} (width {spec['width']}, {spec['num_classes']} "
                        f"classes): {' '.join(s.strip() for s in missing)[:300]}; pass the right --model") from exc
    return classifier.eval(), meta
