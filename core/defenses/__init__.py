"""Defenses. REFINE is the paper's method (``refine.py``). The baselines BTI-DBF (``bti_dbf``), Neural Cleanse
(``neural_cleanse``) and ShrinkPad (``shrinkpad``) are library modules so far, usable from Python; their
command line and the comparison with REFINE come with issue 12."""
from .refine import REFINE, DefendedModel, load_defended, save_defended
from .remap import LabelRemap, random_derangement

__all__ = ["REFINE", "DefendedModel", "LabelRemap", "load_defended", "random_derangement", "save_defended"]
