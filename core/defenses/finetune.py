"""Fine-tuning (FT) on the defender's labelled benign data, and FT followed by REFINE (paper Appendix G,
Table 13). FT repairs a copy of the model; the model given is not modified."""
from __future__ import annotations

import copy

from ..augment import AUGMENTATIONS
from ..data import Split
from ..models import Classifier
from ..train import train_classifier
from ..validate import choice, integer, number
from .base import Defense, FitContext
from .parts import DeployedModel
from .refine import RefineDefense

# FT's recipe: the common fine-tuning baseline (5 % of the training set with labels, SGD 0.01, 10 epochs,
# crop + flip); the REFINE paper gives no FT hyper-parameters.
FT_DEFAULTS = {"ft_epochs": 10, "ft_lr": 0.01, "ft_batch_size": 128, "ft_weight_decay": 5e-4, "ft_augment": "crop_flip"}
FT_CHECKS = {"ft_epochs": integer(1), "ft_lr": number(0, lo_open=True), "ft_batch_size": integer(1),
             "ft_weight_decay": number(0), "ft_augment": choice(AUGMENTATIONS)}


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


class FineTuning(Defense):
    name = "FT"
    summary = "fine-tuning a copy of the model on the defender's labelled data"
    labelled = True
    defaults = {**FT_DEFAULTS, "data_fraction": 0.05}
    checks = FT_CHECKS

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        # no evaluation here: the job evaluates the deployed model once, at the end
        return DeployedModel(fine_tune(model, data, self.settings, ctx, "train_state.pth"))


class FineTuningRefine(RefineDefense):
    """FT, then REFINE on the fine-tuned model (both on the same defender data; REFINE reads no labels)."""

    name = "FT+REFINE"
    summary = "fine-tuning, then REFINE around the fine-tuned model (paper Appendix G)"
    labelled = True
    preset_task = "defense"
    defaults = {**RefineDefense.defaults, **FT_DEFAULTS, "data_fraction": 0.05}
    checks = {**RefineDefense.checks, **FT_CHECKS}

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        ctx.log("FT+REFINE: fine-tuning")
        tuned = fine_tune(model, data, self.settings, ctx, "finetune_state.pth")
        ctx.log("FT+REFINE: REFINE around the fine-tuned model")
        return super().fit(tuned, data, ctx)
