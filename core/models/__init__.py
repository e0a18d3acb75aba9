"""Model registry and the :class:`Classifier` wrapper that makes input normalization explicit.

Every classifier in this project takes images in [0, 1]; the normalization it was trained with is a
recorded part of it (``Classifier.normalize``), so a model trained elsewhere on normalized inputs is
wrapped with its own mean/std and everything downstream (attacks, REFINE) sees plain images.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .resnet import resnet18, resnet34, resnet50
from .small import VGG16, DenseNet121, ViT
from .unet import UNet

NORMALIZATIONS = {
    "none": None,
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _torchvision_resnet(depth):
    def build(num_classes, width):
        try:
            import torchvision
        except Exception as exc:  # ImportError, or a torchvision built for another torch
            raise UserError(f"ImageNet50 models need a working torchvision ({exc}); pip install torchvision") from exc
        if width != 64:
            raise UserError("--width applies to CIFAR models only; ImageNet ResNets come from torchvision")
        return getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)

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

    ``spec`` records how to rebuild it: ``{'model', 'dataset_kind', 'num_classes', 'width', 'normalization'}``.
    """

    def __init__(self, net: nn.Module, spec: dict):
        super().__init__()
        self.spec = dict(spec)
        self.normalize = Normalize(*(NORMALIZATIONS[spec["normalization"]] or (None, None)))
        self.net = net

    def forward(self, x):
        return self.net(self.normalize(x))


def dataset_kind(dataset: str) -> str:
    return "imagenet" if dataset.lower().startswith("imagenet") else "cifar"


def build_classifier(model: str, dataset: str, num_classes: int, width: int = 64,
                     normalization: str = "cifar10") -> Classifier:
    """Builds an untrained classifier; raises UserError for unknown names."""
    kind = dataset_kind(dataset)
    if (kind, model) not in MODELS:
        known = ", ".join(name for k, name in MODELS if k == kind)
        raise UserError(f"unknown model {model!r} for {dataset}; choose one of {known}")
    if normalization not in NORMALIZATIONS:
        raise UserError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    spec = {"model": model, "dataset_kind": kind, "num_classes": num_classes, "width": width,
            "normalization": normalization}
    return Classifier(MODELS[(kind, model)](num_classes, width), spec)


__all__ = ["Classifier", "Normalize", "UNet", "build_classifier", "MODEL_NAMES", "NORMALIZATIONS"]
