"""What every defense shares: its settings, the defender's data it needs, and ``fit`` -> a deployable model.

    defense = core.defense_class("ShrinkPad")(pad_size=4)
    deployed = defense.fit(model, defender_data, FitContext(device="cpu"))   # a core.defenses.parts.DeployedModel
    core.ba_asr(deployed, benign_test, poisoned_test)
    defense.detection                                                        # e.g. {'target': 0, ...} or {}

A defense never modifies the model it is given: it trains parts around a frozen copy (REFINE, T-MR,
BTI-DBF(P), NC, ShrinkPad) or repairs a copy (FT, BTI-DBF(U)). ``defaults`` are the paper's (or the method
authors') values; ``checks`` validate them (core.validate); the job (core.run_defense) turns both into
command-line flags and config keys.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..data import Split, memory_format
from ..models import Classifier
from .parts import DeployedModel


@dataclass
class FitContext:
    """How a defense runs, as opposed to what it computes: device, seed, mixed precision, logging, where to
    keep resumable state (``work_dir``; None: not resumable), what must match for a resume (``fingerprint``),
    an evaluation callback ``evaluate(deployed, epoch) -> metrics`` for defenses trained over epochs, and
    the speed switches (``compile``, ``fused``) for those that support them."""

    device: torch.device | str = "cpu"
    seed: int = 0
    amp: bool = True
    log: Callable[[str], None] = print
    work_dir: Path | None = None
    fingerprint: dict = field(default_factory=dict)
    evaluate: Callable[[DeployedModel, int], dict] | None = None
    eval_every: int = 10
    compile: bool = False
    fused: bool = False

    def state_path(self, name: str) -> Path | None:
        return Path(self.work_dir) / name if self.work_dir is not None else None


class Defense:
    """Base class. Subclasses set ``name``, ``labelled`` (whether ``fit`` reads the defender's labels),
    ``defaults`` (every setting with its default, including ``data_fraction``: the share of the training set
    the defender holds) and ``checks``; and implement :meth:`fit`."""

    name = ""
    summary = ""
    labelled = False
    defaults: dict = {}
    checks: dict = {}  # setting -> core.validate.Check
    preset_task = "defense"  # presets come from configs/<preset_task>/<preset>.yaml (REFINE: configs/refine/)

    def __init__(self, **settings):
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name} has no setting(s) {', '.join(sorted(unknown))}")
        self.settings = {**self.defaults, **settings}
        self.detection: dict = {}  # filled by fit() for defenses that also detect (target class, anomaly index)

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        """Builds the defense from ``model`` (a :class:`Classifier`, images in [0, 1]; not modified) and the
        defender's ``data`` (uint8 images N×C×H×W; labels are read only when ``labelled``)."""
        raise NotImplementedError

    def preview_rows(self, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra rows for the run's preview.png, computed from clean images in [0, 1] (BTI-DBF: G(x))."""
        return {}

    def __getattr__(self, key):  # settings read as attributes: self.epochs
        settings = self.__dict__.get("settings", {})
        if key in settings:
            return settings[key]
        raise AttributeError(key)


def frozen_copy(model: Classifier, device) -> Classifier:
    """A deep copy of ``model`` on ``device`` in eval mode without gradients: the F that a defense wraps,
    so the caller's model keeps its weights, buffers, modes and ``requires_grad`` flags."""
    frozen = copy.deepcopy(model).to(device).to(memory_format=memory_format(torch.device(device))).eval()
    frozen.requires_grad_(False)
    return frozen
