"""Defenses, each behind one interface (:class:`core.defenses.base.Defense`: ``fit`` on the defender's data ->
a :class:`core.defenses.parts.DeployedModel` of input transform, classifier and output map).

REFINE is the paper's method (``refine.py``); the baselines are BTI-DBF (U and P), Neural Cleanse with input
purification, ShrinkPad, T-MR and fine-tuning (alone and followed by REFINE). ``defend.py --defense NAME`` runs
any of them; :data:`DEFENSES` is the one registry of names.
"""
from .base import Defense, FitContext, frozen_copy
from .bti_dbf import BTIDBFPurify, BTIDBFUnlearn
from .finetune import FineTuning, FineTuningRefine
from .neural_cleanse import NeuralCleanseDefense
from .parts import DeployedModel, Purifier, UniversalPerturbation, load_deployed, save_deployed
from .refine import REFINE, RefineDefense
from .remap import LabelRemap, random_derangement
from .shrinkpad import ShrinkPad, ShrinkPadDefense
from .tmr import TMR
from ..errors import UserError

DEFENSES: dict[str, type[Defense]] = {cls.name: cls for cls in (
    RefineDefense, BTIDBFPurify, BTIDBFUnlearn, NeuralCleanseDefense, ShrinkPadDefense, TMR, FineTuning,
    FineTuningRefine)}
# other spellings users type (the paper's, BackdoorBox's)
DEFENSE_ALIASES = {"BTI-DBF(P)": "BTI-DBF-P", "BTI-DBF(U)": "BTI-DBF-U", "NeuralCleanse": "NC", "TMR": "T-MR",
                   "FT-REFINE": "FT+REFINE", "SP": "ShrinkPad"}


def defense_class(name: str) -> type[Defense]:
    """The defense registered under ``name`` or one of its aliases (case-insensitive); a one-line error otherwise."""
    for key in (name, DEFENSE_ALIASES.get(name)):
        if key in DEFENSES:
            return DEFENSES[key]
    folded = {k.lower(): v for k, v in {**DEFENSES, **{a: DEFENSES[t] for a, t in DEFENSE_ALIASES.items()}}.items()}
    if str(name).lower() in folded:
        return folded[str(name).lower()]
    raise UserError(f"unknown defense {name!r}; choose one of {', '.join(DEFENSES)}")


__all__ = ["DEFENSES", "DEFENSE_ALIASES", "BTIDBFPurify", "BTIDBFUnlearn", "Defense", "DeployedModel", "FineTuning",
           "FineTuningRefine", "FitContext", "LabelRemap", "NeuralCleanseDefense", "Purifier", "REFINE",
           "RefineDefense", "ShrinkPad", "ShrinkPadDefense", "TMR", "UniversalPerturbation", "defense_class",
           "frozen_copy", "load_deployed", "random_derangement", "save_deployed"]
