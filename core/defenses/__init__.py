"""Defenses, each behind one interface (:class:`core.defenses.base.Defense`: ``fit`` on the defender's data ->
a :class:`core.defenses.parts.DeployedModel` of input transform, classifier and output map).

REFINE is the paper's method (``refine.py``); the baselines are BTI-DBF (U and P), Neural Cleanse with input
purification, ShrinkPad, T-MR and fine-tuning (alone and followed by REFINE). Each is one file whose class
wears ``@register_defense``; every module of this package is imported here, so a new defense is one new
file. ``defend.py --defense NAME`` runs any of them; :data:`DEFENSES` is the registry.
"""
from ..registry import import_all
from .base import DEFENSES, Defense, FitContext, frozen_copy, register_defense

import_all(__name__, __path__)

from .blackbox import BlackBoxModel, BlackBoxRefine  # noqa: E402
from .bti_dbf import BTIDBFPurify, BTIDBFUnlearn  # noqa: E402  (the classes, for use from Python)
from .finetune import FineTuning, FineTuningRefine  # noqa: E402
from .neural_cleanse import NeuralCleanseDefense  # noqa: E402
from .parts import (DeployedModel, Purifier, UniversalPerturbation, load_deployed, register_part,  # noqa: E402
                    save_deployed)
from .refine import REFINE, RefineDefense  # noqa: E402
from .remap import LabelRemap, random_derangement  # noqa: E402
from .shrinkpad import ShrinkPad, ShrinkPadDefense  # noqa: E402
from .tmr import TMR  # noqa: E402


def defense_class(name: str) -> type[Defense]:
    """The defense registered under ``name`` or one of its aliases (case-insensitive); a one-line error otherwise."""
    return DEFENSES.get(name)


__all__ = ["DEFENSES", "BlackBoxModel", "BlackBoxRefine", "BTIDBFPurify", "BTIDBFUnlearn", "Defense", "DeployedModel", "FineTuning",
           "FineTuningRefine", "FitContext", "LabelRemap", "NeuralCleanseDefense", "Purifier", "REFINE",
           "RefineDefense", "ShrinkPad", "ShrinkPadDefense", "TMR", "UniversalPerturbation", "defense_class",
           "frozen_copy", "load_deployed", "random_derangement", "register_defense", "register_part", "save_deployed"]
