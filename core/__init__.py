"""REFINE toolkit: backdoor attacks and the REFINE defense (Chen et al., ICLR 2025).

    import core
    attack = core.BadNets(y_target=0, poisoned_rate=0.1)      # or WaNet, PhysicalBA, BATT, LabelConsistent, ...
    defense = core.REFINE(unet=core.UNet(64), model=classifier, num_classes=10)
    deployed = core.defense_class("BTI-DBF-P")(rounds=5).fit(classifier, defender_data, FitContext())
"""
import torch

# Denormal floats (tiny activations/gradients) make CPU kernels crawl - on some virtual machines a
# training step went from 0.05 s to minutes. Flushing them to zero changes nothing that matters for
# training; it must happen before PyTorch starts its worker threads, which copy the setting.
torch.set_flush_denormal(True)

from .attacks import (ATTACKS, BATT, AdaptivePatch, BadNets, Benign, Blended, LabelConsistent, PhysicalBA, WaNet,
                      build_attack, restore_attack)
from .checkpoint import load_classifier, save_classifier
from .data import load_split
from .defenses import DEFENSES, REFINE, DeployedModel, FitContext, defense_class, load_deployed
from .errors import UserError
from .metrics import ba_asr
from .models import Classifier, UNet, build_classifier

__all__ = ["ATTACKS", "AdaptivePatch", "BATT", "BadNets", "Benign", "Blended", "Classifier", "DEFENSES", "DeployedModel", "FitContext",
           "LabelConsistent", "PhysicalBA", "REFINE", "UNet", "UserError", "WaNet", "ba_asr", "build_attack",
           "build_classifier", "defense_class", "load_classifier", "load_deployed", "load_split", "restore_attack", "save_classifier"]
