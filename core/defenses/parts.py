"""The deployable result of every defense, made of three parts, and the one file format that stores it.

    images in [0, 1] -> input transform -> classifier -> output map -> logits in the original label space

* input transform: REFINE's UNet, BTI-DBF(P)'s / Neural Cleanse's purifier, ShrinkPad, T-MR's universal
  perturbation, or the identity;
* classifier: the model that was given (frozen) or a repaired copy (FT, BTI-DBF(U));
* output map: REFINE's label derangement, or the identity.

A transform or output map is saved as (registry name, spec, weights): :data:`PARTS` maps the name to a
builder that takes the spec as keyword arguments, and the weights are loaded into what it builds, so that
one loader (:func:`load_deployed`) and one ``--eval`` serve every defense. The classifier is saved in the
classifier format of :mod:`core.checkpoint`. Files are read with ``weights_only`` (no code is unpickled).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..checkpoint import FORMAT as CLASSIFIER_FORMAT
from ..checkpoint import atomic_save, classifier_from_spec, safe_load
from ..errors import UserError
from ..models import Classifier, GeneratorUNet, Normalize, UNet
from .remap import LabelRemap

DEPLOYED_FORMAT = "refine-toolkit/deployed-v1"


class Identity(nn.Identity):
    """The part that changes nothing (an undefended side: no input transform, or no output map)."""

    part_name = "identity"

    def part_spec(self) -> dict:
        return {}


class UniversalPerturbation(nn.Module):
    """T-MR's input transform (traditional model reprogramming): one trainable additive pattern δ of the
    image's shape, the same for every image: x -> clamp(x + δ, 0, 1). δ starts at zero (the identity)."""

    part_name = "perturbation"

    def __init__(self, channels: int = 3, height: int = 32, width: int = 32):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(1, channels, height, width))

    def part_spec(self) -> dict:
        _, channels, height, width = self.delta.shape
        return {"channels": channels, "height": height, "width": width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta).clamp(0, 1)


class Purifier(nn.Module):
    """An input purification network that works in the classifier's *normalized* space (BTI-DBF's generator
    shape), as an input transform of [0, 1] images N×C×H×W -> [0, 1] images of the same shape: normalize
    with (``mean``, ``std``), add Gaussian noise of std ``noise`` (BTI-DBF(P) purifies x + 0.03·ε at
    inference; 0: none), apply ``unet``, map back to pixels, clamp to [0, 1]. The defended model is
    ``model(purifier(x))`` with the original, unmodified ``model``."""

    part_name = "purifier"  # with a BTI-DBF GeneratorUNet inside (the only kind saved so far)

    def __init__(self, unet: nn.Module, mean=None, std=None, noise: float = 0.0):
        super().__init__()
        self.unet, self.noise = unet, float(noise)
        self.normalize = Normalize(mean, std)
        self.normalization = {"mean": list(mean) if mean is not None else None,
                              "std": list(std) if std is not None else None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.normalize(x)
        if self.noise:
            xn = xn + self.noise * torch.randn_like(xn)
        out = self.unet(xn)
        if self.normalize.enabled:
            out = out * self.normalize.std + self.normalize.mean
        return out.clamp(0, 1)

    def part_spec(self) -> dict:
        return {"channels": self.unet.channels, "blocks": self.unet.blocks, "noise": self.noise, **self.normalization}


def _purifier(channels: int = 32, blocks: int = 4, mean=None, std=None, noise: float = 0.0) -> Purifier:
    return Purifier(GeneratorUNet(channels, blocks), mean, std, noise)


# registry name -> builder(**spec). A part says its own name and spec: ``part_name``, ``part_spec()``; a part
# class of a new defense registers itself with ``@register_part`` (its builder is the class: ``cls(**spec)``).
PARTS: dict[str, Callable[..., nn.Module]] = {
    "identity": lambda: Identity(),
    "unet": lambda channels: UNet(channels),
    "purifier": _purifier,
    "perturbation": lambda channels, height, width: UniversalPerturbation(channels, height, width),
    "derangement": lambda num_classes: LabelRemap(torch.arange(num_classes)),  # the weights hold the permutation
}


def register_part(cls):
    """Class decorator: makes ``cls`` (with ``part_name`` and ``part_spec()``) a part that deployed models save
    and :func:`load_deployed` rebuilds as ``cls(**spec)``."""
    if PARTS.get(cls.part_name, cls) is not cls:
        raise ValueError(f"part name {cls.part_name!r} of {cls.__qualname__} is taken")
    PARTS[cls.part_name] = cls
    return cls


def spec_of(part: nn.Module) -> tuple[str, dict]:
    """(registry name, spec) of a part; a clear error for a module that is not a registered part."""
    if type(part) is nn.Identity:
        return "identity", {}
    if getattr(part, "part_name", None) in PARTS:
        return part.part_name, part.part_spec()
    raise TypeError(f"{type(part).__name__} is not a part the toolkit can save; give it part_name and part_spec() "
                    f"and decorate its class with core.defenses.parts.register_part")


class DeployedModel(nn.Module):
    """A defended model: ``output_map(classifier(transform(x)))``; images in [0, 1], N×C×H×W -> logits N×K
    in the original label space. ``transform``/``output_map`` default to the identity."""

    def __init__(self, classifier: Classifier, transform: nn.Module | None = None, output_map: nn.Module | None = None):
        super().__init__()
        self.transform = transform if transform is not None else Identity()
        self.classifier = classifier
        self.output_map = output_map if output_map is not None else Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_map(self.classifier(self.transform(x)))

    def describe(self) -> dict:
        """The names of the parts, for logs and metrics: ``{'transform': 'unet', 'classifier': 'ResNet18', ...}``."""
        return {"transform": spec_of(self.transform)[0], "classifier": self.classifier.spec.get("model"),
                "output_map": spec_of(self.output_map)[0]}


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}


def _part_record(part: nn.Module) -> dict:
    name, spec = spec_of(part)
    return {"name": name, "spec": spec, "state_dict": _cpu(part.state_dict())}


def save_deployed(path, model: DeployedModel, **meta) -> None:
    """Writes ``model`` to one file (atomically) with ``meta`` (defense, dataset, attack, trigger, metrics...)."""
    atomic_save({"format": DEPLOYED_FORMAT, "transform": _part_record(model.transform),
                 "classifier": {"format": CLASSIFIER_FORMAT, "spec": model.classifier.spec,
                                "state_dict": _cpu(model.classifier.net.state_dict())},
                 "output_map": _part_record(model.output_map), "meta": meta}, path)


def _build_part(record: dict, path) -> nn.Module:
    name = record.get("name")
    if name not in PARTS:
        raise UserError(f"{path} holds a part {name!r} that this version of the toolkit does not know; "
                        f"known parts: {', '.join(PARTS)}")
    part = PARTS[name](**record.get("spec", {}))
    part.load_state_dict(record["state_dict"])
    return part


def load_deployed(path) -> tuple[DeployedModel, dict]:
    """Loads a defended model saved by any defense of the toolkit (``weights_only``); returns (model in eval
    mode, meta)."""
    blob = safe_load(path)
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt != DEPLOYED_FORMAT:
        raise UserError(f"{path} is not a defended model saved by the toolkit (look for defended_model.pth in a "
                        f"defense's run folder)")
    classifier = classifier_from_spec(blob["classifier"]["spec"])
    classifier.net.load_state_dict(blob["classifier"]["state_dict"])
    model = DeployedModel(classifier, _build_part(blob["transform"], path), _build_part(blob["output_map"], path))
    return model.eval(), blob.get("meta", {})
