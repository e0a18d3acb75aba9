"""REFINE toolkit: backdoor attacks and the REFINE defense (Chen et al., ICLR 2025).

    import core
    attack = core.BadNets(y_target=0, poisoned_rate=0.1)      # or WaNet, PhysicalBA, BATT, LabelConsistent, ...
    defense = core.REFINE(unet=core.UNet(64), model=classifier, num_classes=10)
    deployed = core.defense_class("BTI-DBF-P")(rounds=5).fit(classifier, defender_data, FitContext())
"""
# Importing is lazy (PEP 562): ``import core.cli`` stays free of PyTorch, so the scripts can catch Ctrl-C while
# PyTorch is still loading (see core.cli.starting); ``core.BadNets`` imports its module on first use.
import importlib

_HOMES = {
    ".attacks": ("ATTACKS", "BATT", "AdaptivePatch", "BadNets", "Benign", "Blended", "LabelConsistent", "PhysicalBA",
                 "WaNet", "build_attack", "restore_attack"),
    ".checkpoint": ("load_classifier", "save_classifier"),
    ".data": ("load_split",),
    ".defenses": ("DEFENSES", "REFINE", "DeployedModel", "FitContext", "defense_class", "load_deployed"),
    ".errors": ("UserError",),
    ".metrics": ("ba_asr",),
    ".models": ("Classifier", "UNet", "build_classifier"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME_OF)


def __getattr__(name):
    if name not in _HOME_OF:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME_OF[name], __name__), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
