"""REFINE toolkit: backdoor attacks and the REFINE defense (Chen et al., ICLR 2025).

    import core
    attack = core.BadNets(y_target=0, poisoned_rate=0.1)
    defense = core.REFINE(unet=core.UNet(64), model=classifier, num_classes=10)
"""
from .attacks import ATTACKS, BadNets, Benign, Blended, build_attack
from .checkpoint import load_classifier, save_classifier
from .data import load_split
from .defenses import REFINE, DefendedModel, load_defended
from .errors import UserError
from .metrics import ba_asr
from .models import Classifier, UNet, build_classifier

__all__ = ["ATTACKS", "BadNets", "Benign", "Blended", "Classifier", "DefendedModel", "REFINE", "UNet", "UserError",
           "ba_asr", "build_attack", "build_classifier", "load_classifier", "load_defended", "load_split",
           "save_classifier"]
