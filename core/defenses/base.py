"""What every defense shares: its settings, the defender's data it needs, and ``fit`` -> a deployable model.

    defense = core.defense_class("ShrinkPad")(pad_size=4)
    deployed = defense.fit(model, defender_data, FitContext(device="cpu"))   # a core.defenses.parts.DeployedModel
    core.ba_asr(deployed, benign_test, poisoned_test)
    defense.detection                                                        # e.g. {'target': 0, ...} or {}

A defense never modifies the model it is given: it trains parts around a frozen copy (REFINE, T-MR,
BTI-DBF(P), NC, ShrinkPad) or repairs a copy (FT, BTI-DBF(U)). A defense is one file in core/defenses/: its
class wears ``@register_defense`` and declares its ``settings`` (core.settings.Setting: default - the
paper's or the method authors' value -, help, check); the job (core.run_defense) turns them into
command-line flags, config keys and checks, and what else it needs to know is declared on the class
(``labelled``, ``detects_target``, ``version``, :meth:`Defense.write_outputs`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..data import Split, memory_format
from ..models import Classifier
from ..registry import Registry
from ..checks import number
from ..settings import Setting, with_defaults
from .parts import DeployedModel

DEFENSES = Registry("defense")
register_defense = DEFENSES.register  # the decorator every defense class wears


@dataclass
class FitContext:
    """How a defense runs, as opposed to what it computes: device, seed, mixed precision, logging, where to
    keep resumable state (``work_dir``; None: not resumable), what must match for a resume (``fingerprint``),
    an evaluation callback ``evaluate(deployed, epoch, final=False) -> metrics`` for defenses trained over
    epochs (``final``: this is the model fit() returns, so the job need not evaluate it again),
    ``measure(model)`` for a defense that reports other models' BA/ASR too (REFINE-BB's surrogate), and
    the speed switches (``compile``, ``fused``) for those that support them."""

    device: torch.device | str = "cpu"
    seed: int = 0
    amp: bool = True
    log: Callable[[str], None] = print
    work_dir: Path | None = None
    fingerprint: dict = field(default_factory=dict)
    evaluate: Callable[..., dict] | None = None  # evaluate(deployed, epoch, final=False) -> metrics
    eval_every: int = 10
    compile: bool = False
    fused: bool = False
    measure: Callable[..., dict] | None = None  # measure(model) -> BA/ASR on the run's test sets, nothing logged

    def state_path(self, name: str) -> Path | None:
        """Where the resumable state ``name`` lives: ``<work_dir>/state/<name>`` (the job discards ``state/``
        with --fresh and checks every file in it before a resume); None when not resumable."""
        return Path(self.work_dir) / STATE_DIR / name if self.work_dir is not None else None


STATE_DIR = "state"


def defender_share(default: float) -> Setting:
    """The ``data_fraction`` setting every defense declares: its own default share of the training set."""
    return Setting(default, "share of the training set the defender holds (a seeded subset)",
                   number(0, 1, lo_open=True), "data")


class Defense:
    """Base class. Subclasses set ``name``, ``labelled`` (whether ``fit`` reads the defender's labels) and
    ``settings`` (every setting declared once, including ``data_fraction``: the share of the training set the
    defender holds); and implement :meth:`fit`. Settings read as attributes (``self.epochs``); ``self.values``
    holds them all."""

    name = ""
    aliases: tuple[str, ...] = ()
    summary = ""
    order = 100  # place in listings (the paper's order)
    version = 1  # bumped whenever what the defense computes changes: runs of another version are not reused
    labelled = False
    settings: dict[str, Setting] = {}
    preset_task = "defense"  # presets come from configs/<preset_task>/<preset>.yaml (REFINE: configs/refine/)
    detects_target = False  # fit() fills ``detection['target']`` (the class it names as the backdoor's target)
    compared_by_default = True  # a column of compare.py when --defenses is not given (the paper's Table 1-2 set)
    output_root = "defense_res"  # default --out; runs go to <out>/<DATASET>/<MODEL>/<ATTACK>/<name>/<run>
    own_folder = True  # False: <out>/<DATASET>/<MODEL>/<ATTACK>/<run> (REFINE's official layout)

    def __init__(self, **values):
        self.values = with_defaults(self.settings, values, self.name)
        self.detection: dict = {}  # filled by fit() for defenses that also detect (target class, anomaly index)
        self.report: dict = {}  # further measurements fit() makes (REFINE-BB: the surrogate's BA/ASR): metrics.json

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        """Builds the defense from ``model`` (a :class:`Classifier`, images in [0, 1]; not modified) and the
        defender's ``data`` (uint8 images N×C×H×W; labels are read only when ``labelled``)."""
        raise NotImplementedError

    def check(self, image_shape: tuple[int, int, int]) -> None:
        """Checks that need the data's image shape (C, H, W), run by the job before anything is written; raises a
        UserError naming the flag. Nothing by default (ShrinkPad: its pad size must fit the image)."""

    def preview_rows(self, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra rows for the run's preview.png, computed from clean images in [0, 1] (BTI-DBF: G(x))."""
        return {}

    def write_outputs(self, deployed: DeployedModel, folder: Path) -> list[Path]:
        """Files of the run folder beyond the deployed model (REFINE: label_mapping.json); returns their paths."""
        return []

    def __getattr__(self, key):  # settings read as attributes: self.epochs
        values = self.__dict__.get("values", {})
        if key in values:
            return values[key]
        raise AttributeError(key)


def frozen_copy(model: Classifier, device) -> Classifier:
    """A deep copy of ``model`` on ``device`` in eval mode without gradients: the F that a defense wraps,
    so the caller's model keeps its weights, buffers, modes and ``requires_grad`` flags."""
    frozen = copy.deepcopy(model).to(device).to(memory_format=memory_format(torch.device(device))).eval()
    frozen.requires_grad_(False)
    return frozen
