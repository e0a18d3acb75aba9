"""Model registry and the :class:`Classifier` wrapper that makes input normalization explicit.

Every classifier in this project takes images in [0, 1]; the normalization it was trained with is a
recorded part of it (``Classifier.normalize``), so a model trained elsewhere on normalized inputs is
wrapped with its own mean/std and everything downstream (attacks, REFINE) sees plain images.

Every classifier network (``Classifier.net``: the CIFAR ResNets, VGG16, DenseNet121, ViT, torchvision's
ImageNet ResNets) splits as timm's models do: ``net.forward_features(x)`` is the backbone f_b (the last
convolutional stage's output N×C×h×w; the ViT's normed token sequence N×T×D) and ``net.forward_head(f)`` the
rest (pooling + linear layer), with ``net(x) == net.forward_head(net.forward_features(x))``. Defenses that
work on the features (BTI-DBF) use that split, so they serve every architecture.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import UserError
from .resnet import resnet18, resnet34, resnet50
from .generator import GeneratorUNet
from .small import VGG16, DenseNet121, ViT
from .unet import UNet

NORMALIZATIONS = {
    "none": None,
    # CIFAR-10's own per-channel mean and std (this toolkit's attack.py default for CIFAR-10)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # An often-copied variant with a smaller std (not CIFAR-10's per-channel std), used by the authors'
    # REFINE code, BackdoorBox and the BTI-DBF code to train their CIFAR-10 models: their checkpoints need it.
    "backdoorbox": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NORMALIZATION_HELP = ("checkpoints from the authors' REFINE code, BackdoorBox or BTI-DBF need `backdoorbox` "
                      "(CIFAR-10) or `imagenet` (ImageNet-50)")


def _channel_values(value, flag: str, positive: bool) -> tuple[float, ...]:
    parts = value.replace(",", " ").split() if isinstance(value, str) else value
    try:
        values = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise UserError(f"--{flag} must be 3 comma-separated numbers, one per RGB channel (e.g. "
                        f"--{flag} {'0.2023,0.1994,0.2010' if positive else '0.4914,0.4822,0.4465'}), got {value!r}")
    if positive and min(values) <= 0:
        raise UserError(f"--{flag} values must be positive, got {value!r}")
    return values


def resolve_normalization(name: str | None = None, mean=None, std=None) -> dict:
    """The one place where a normalization name and explicit values are turned into what a model uses.

    Explicit ``mean``/``std`` (3 numbers each, as a list or a "a,b,c" string) win over ``name`` and are
    labelled ``custom`` unless they equal named statistics (then labelled with that name). Returns the
    spec/config entries ``{'normalization': label, 'mean': [3 floats] or None, 'std': [3 floats] or None}``.
    """
    if (mean is None) != (std is None):
        raise UserError("--mean and --std go together: pass both (3 values each) or neither")
    if mean is not None:
        values = (_channel_values(mean, "mean", False), _channel_values(std, "std", True))
        named = [n for n, v in NORMALIZATIONS.items() if v == values]
        label = name if name in named else (named[0] if named else "custom")
        return {"normalization": label, "mean": list(values[0]), "std": list(values[1])}
    name = name or "none"
    if name not in NORMALIZATIONS:
        raise UserError(f"unknown normalization {name!r}; choose one of {', '.join(NORMALIZATIONS)}, or pass "
                        f"--mean and --std")
    values = NORMALIZATIONS[name]
    return {"normalization": name, "mean": list(values[0]) if values else None,
            "std": list(values[1]) if values else None}


def _torchvision_resnet(depth):
    def build(num_classes, width):
        try:
            from .torchvision_resnet import torchvision_resnet
        except Exception as exc:  # ImportError, or a torchvision built for another torch
            raise UserError(f"ImageNet50 models need a working torchvision ({exc}); pip install torchvision") from exc
        if width != 64:
            raise UserError("--width applies to CIFAR models only; ImageNet ResNets come from torchvision")
        return torchvision_resnet(depth, num_classes)  # torchvision's ResNet with forward_features/forward_head

    return build


# (dataset kind, name) -> builder(num_classes, width)
MODELS = {
    ("cifar", "ResNet18"): lambda n, w: resnet18(n, w),
    ("cifar", "ResNet34"): lambda n, w: resnet34(n, w),
    ("cifar", "ResNet50"): lambda n, w: resnet50(n, w),
    ("cifar", "VGG16"): lambda n, w: VGG16(n, w),
    ("cifar", "DenseNet121"): lambda n, w: DenseNet121(n, w),
    ("cifar", "ViT"): lambda n, w: ViT(n, w),
    ("imagenet", "ResNet18"): _torchvision_resnet(18),
    ("imagenet", "ResNet34"): _torchvision_resnet(34),
    ("imagenet", "ResNet50"): _torchvision_resnet(50),
}
MODEL_NAMES = sorted({name for _, name in MODELS})


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean/std stored as buffers (identity when none)."""

    def __init__(self, mean=None, std=None):
        super().__init__()
        self.enabled = mean is not None
        self.register_buffer("mean", torch.tensor(mean or (0.0,)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or (1.0,)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std if self.enabled else x


class Classifier(nn.Module):
    """``net(normalize(x))`` for x in [0, 1], N×C×H×W -> logits N×num_classes.

    ``spec`` records how to rebuild it: ``{'model', 'dataset_kind', 'num_classes', 'width', 'normalization',
    'mean', 'std'}`` (older checkpoints hold the normalization's name only).
    """

    def __init__(self, net: nn.Module, spec: dict):
        super().__init__()
        norm = resolve_normalization(spec.get("normalization"), spec.get("mean"), spec.get("std"))
        self.spec = {**spec, **norm}
        self.normalize = Normalize(norm["mean"], norm["std"])
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))


def dataset_kind(dataset: str) -> str:
    return "imagenet" if dataset.lower().startswith("imagenet") else "cifar"


def build_classifier(model: str, dataset: str, num_classes: int, width: int = 64,
                     normalization: str | None = "cifar10", mean=None, std=None) -> Classifier:
    """Builds an untrained classifier; raises UserError for unknown names.

    ``mean``/``std`` (3 values each) replace the named ``normalization``: see :func:`resolve_normalization`.
    """
    kind = dataset_kind(dataset)
    if (kind, model) not in MODELS:
        known = ", ".join(name for k, name in MODELS if k == kind)
        raise UserError(f"unknown model {model!r} for {dataset}; choose one of {known}")
    spec = {"model": model, "dataset_kind": kind, "num_classes": num_classes, "width": width,
            **resolve_normalization(normalization, mean, std)}
    return Classifier(MODELS[(kind, model)](num_classes, width), spec)


__all__ = ["Classifier", "GeneratorUNet", "Normalize", "UNet", "build_classifier", "resolve_normalization",
           "MODEL_NAMES", "NORMALIZATIONS", "NORMALIZATION_HELP"]
