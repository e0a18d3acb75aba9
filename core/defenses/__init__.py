"""Defenses. REFINE is the paper's method; others (BTI-DBF, baselines) come through later issues."""
from .refine import REFINE, DefendedModel, load_defended, save_defended
from .remap import LabelRemap, random_derangement

__all__ = ["REFINE", "DefendedModel", "LabelRemap", "load_defended", "random_derangement", "save_defended"]
