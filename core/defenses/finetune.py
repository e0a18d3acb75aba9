"""Fine-tuning (FT) on the defender's labelled benign data, and FT followed by REFINE (paper Appendix G,
Table 13). FT repairs a copy of the model; the model given is not modified."""
from __future__ import annotations

import copy

from ..augment import AUGMENTATIONS
from ..checks import choice, integer, learning_rate, number
from ..data import Split
from ..models import Classifier
from ..settings import Setting
from ..train import train_classifier
from .base import Defense, FitContext, defender_share, register_defense
from .parts import DeployedModel
from .refine import RefineDefense

# FT's recipe: the common fine-tuning baseline (5 % of the training set with labels, SGD 0.01, 10 epochs,
# crop + flip, cosine schedule); the REFINE paper gives no FT hyper-parameters.
FT_SETTINGS = {
    "ft_epochs": Setting(10, "FT: fine-tuning epochs", integer(1), "train"),
    "ft_lr": Setting(0.01, "FT: learning rate (SGD, momentum 0.9, cosine schedule)", learning_rate(), "train"),
    "ft_batch_size": Setting(128, "FT: batch size", integer(1), "train"),
    "ft_weight_decay": Setting(5e-4, "FT: weight decay", number(0), "train"),
    "ft_augment": Setting("crop_flip", "FT: augmentation", choice(AUGMENTATIONS), "train"),
}


def fine_tune(model: Classifier, data: Split, settings: dict, ctx: FitContext, state_name: str) -> Classifier:
    """A fine-tuned deep copy of ``model`` (SGD, momentum 0.9, cosine schedule), in eval mode."""
    tuned = copy.deepcopy(model)
    tuned.requires_grad_(True)
    train_classifier(tuned, data, epochs=settings["ft_epochs"], batch_size=settings["ft_batch_size"],
                     lr=settings["ft_lr"], weight_decay=settings["ft_weight_decay"], schedule="cosine",
                     augment=settings["ft_augment"], device=ctx.device, amp=ctx.amp, seed=ctx.seed,
                     state_path=ctx.state_path(state_name), fingerprint=ctx.fingerprint, log=ctx.log,
                     compile=ctx.compile, fused=ctx.fused, eval_every=settings["ft_epochs"])
    return tuned.eval().requires_grad_(False)


@register_defense
class FineTuning(Defense):
    name = "FT"
    order = 70
    summary = "fine-tuning a copy of the model on the defender's labelled data"
    labelled = True
    settings = {**FT_SETTINGS, "data_fraction": defender_share(0.05)}

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        # no evaluation here: the job evaluates the deployed model once, at the end
        return DeployedModel(fine_tune(model, data, self.values, ctx, "train_state.pth"))


@register_defense
class FineTuningRefine(RefineDefense):
    """FT, then REFINE on the fine-tuned model (both on the same defender data; REFINE reads no labels)."""

    name = "FT+REFINE"
    aliases = ("FT-REFINE",)
    order = 80
    compared_by_default = False  # the paper's Appendix G, not a column of Tables 1-2
    summary = "fine-tuning, then REFINE around the fine-tuned model (paper Appendix G)"
    labelled = True
    preset_task = "defense"
    output_root, own_folder = "defense_res", True
    settings = {**RefineDefense.settings, **FT_SETTINGS, "data_fraction": defender_share(0.05)}

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        ctx.log("FT+REFINE: fine-tuning")
        tuned = fine_tune(model, data, self.values, ctx, "finetune_state.pth")
        ctx.log("FT+REFINE: REFINE around the fine-tuned model")
        return super().fit(tuned, data, ctx)
