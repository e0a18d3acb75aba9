"""REFINE in the black-box setting (the paper's Appendix E, Table 11): the defender sees only the suspect model's
output probabilities. A surrogate classifier is distilled from them (mean squared difference of the two softmax
outputs on the defender's unlabeled images, the paper's L_distill), REFINE is trained through the surrogate, and its
T and M are then put around the black-box model.

The suspect model is reached only through :class:`BlackBoxModel` while the defense trains: probabilities, no
gradients, no weights. The deployed model calls the suspect model's forward pass between T and M, which is what
querying it is (the argmax of M over its probabilities is the argmax over its logits).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..augment import AUGMENTATIONS
from ..checks import choice, integer, learning_rate
from ..data import Split
from ..models import MODEL_NAMES, Classifier, build_classifier
from ..runlog import format_metrics
from ..settings import Setting
from ..train import EpochState, fit, lr_factor, make_optimizer
from .base import FitContext, frozen_copy, register_defense
from .parts import DeployedModel
from .refine import RefineDefense

# The surrogate's recipe. The paper names the surrogate (ResNet-18 for a ResNet-50) and its loss, nothing else:
# the rest is ours (docs/fidelity.md, "Choices where the paper is silent").
SURROGATE = {
    "surrogate_model": Setting("ResNet18", "REFINE-BB: the surrogate's architecture (the paper: ResNet-18)",
                               choice(MODEL_NAMES), "train"),
    "surrogate_width": Setting(64, "REFINE-BB: the surrogate's width (64: the standard ResNet-18)", integer(1, 512),
                               "train"),
    "surrogate_epochs": Setting(30, "REFINE-BB: epochs of distilling the black-box's probabilities (ours: the paper "
                                    "gives none)", integer(1), "train"),
    "surrogate_lr": Setting(1e-3, "REFINE-BB: Adam's learning rate for the surrogate, one-cycle schedule (ours)",
                            learning_rate(), "train"),
    "surrogate_batch_size": Setting(128, "REFINE-BB: the surrogate's batch size", integer(1), "train"),
    "surrogate_augment": Setting("crop_flip", "REFINE-BB: augmentation of the distillation batches",
                                 choice(AUGMENTATIONS), "train"),
}


class BlackBoxModel:
    """The suspect model as a black-box defender has it: :meth:`probabilities` of images, nothing else - not
    callable as a module, no parameters, no state dict, no gradients (its outputs carry no graph)."""

    __slots__ = ("_query", "num_classes")

    def __init__(self, model: Classifier, device):
        hidden = frozen_copy(model, device)  # kept only inside the closure below
        device = torch.device(device)

        @torch.no_grad()
        def query(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, enabled=False):  # an API answers in full precision
                return hidden(x.to(device).float()).float().softmax(1)

        self._query = query
        self.num_classes = int(model.spec["num_classes"])

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax outputs N×K (float32, no gradient) for images x N×C×H×W in [0, 1]."""
        return self._query(x).detach()

    def __getattr__(self, name):
        raise AttributeError(f"a black-box model answers probabilities() only; {name!r} is not available")

    def __call__(self, *args, **kwargs):
        raise TypeError("a black-box model is not a module: ask probabilities(x)")


def distil_surrogate(black_box: BlackBoxModel, surrogate: Classifier, images: torch.Tensor, settings: dict,
                     ctx: FitContext) -> Classifier:
    """Trains ``surrogate`` in place so that softmax(surrogate(x)) matches ``black_box.probabilities(x)`` on the
    defender's unlabeled uint8 ``images`` (N×C×H×W): the per-image squared L2 difference of the two probability
    vectors, averaged over the batch (the paper's L_distill). Resumable through ``ctx``; returns it frozen."""
    surrogate = surrogate.to(ctx.device)
    surrogate.requires_grad_(True)
    epochs = settings["surrogate_epochs"]
    opt = make_optimizer(surrogate.parameters(), "Adam", settings["surrogate_lr"], 0.0, 0.0, fused=ctx.fused)
    augment = AUGMENTATIONS[settings["surrogate_augment"]]

    def prepare(x, y, extra, rng):
        return augment(x, generator=rng("augment"))

    def loss_fn(x, y, mods):
        target = black_box.probabilities(x)
        with torch.autocast(x.device.type, enabled=False):
            probs = mods["surrogate"](x).float().softmax(1)
            loss = (probs - target).pow(2).sum(1).mean()
        agree = (probs.argmax(1) == target.argmax(1)).float().mean().detach()
        return loss, {"mse": loss.detach(), "agree": agree}

    labels = torch.full((len(images),), -1, dtype=torch.int64)  # unlabeled: the black box is the only teacher
    state_path = ctx.state_path("surrogate_state.pth")
    fit(loss_fn, {"surrogate": surrogate}, images, labels, optimizer=opt, epochs=epochs,
        batch_size=settings["surrogate_batch_size"], device=ctx.device, seed=ctx.seed, streams="surrogate-",
        trainable=("surrogate",), prepare=prepare, lr=settings["surrogate_lr"],
        lr_at=lambda progress: lr_factor("onecycle", progress, epochs), amp=ctx.amp,
        state=EpochState(state_path, {"surrogate": surrogate}, opt, ctx.fingerprint) if state_path else None,
        log=ctx.log, desc="surrogate epoch")
    return surrogate.eval().requires_grad_(False)


@register_defense
class BlackBoxRefine(RefineDefense):
    """REFINE trained through a surrogate distilled from the suspect model's probabilities (paper Appendix E)."""

    name = "REFINE-BB"
    aliases = ("BlackBox-REFINE",)
    order = 90
    compared_by_default = False  # the paper's Appendix E, not a column of Tables 1-2
    summary = "black-box REFINE: a surrogate distilled from the model's probabilities, REFINE through it (App. E)"
    output_root, own_folder = "defense_res", True
    settings = {**RefineDefense.settings, **SURROGATE}

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        black_box = BlackBoxModel(model, ctx.device)
        torch.manual_seed(ctx.seed)  # the surrogate's initial weights
        kind = model.spec.get("dataset_kind", "cifar")
        # the surrogate is the defender's own model: the standard normalization of the data, not the suspect's
        surrogate = build_classifier(self.surrogate_model, "ImageNet50" if kind == "imagenet" else "CIFAR10",
                                     black_box.num_classes, self.surrogate_width,
                                     "imagenet" if kind == "imagenet" else "cifar10")
        ctx.log(f"REFINE-BB: distilling a {self.surrogate_model} (width {self.surrogate_width}) from the black box's "
                f"probabilities on {len(data)} unlabeled images")
        surrogate = distil_surrogate(black_box, surrogate, data.images, self.values, ctx)
        if ctx.measure:
            self.report["surrogate"] = {"no_defense": ctx.measure(surrogate)}
            ctx.log(f"REFINE-BB: surrogate before REFINE: {format_metrics(self.report['surrogate']['no_defense'])}")
        ctx.log("REFINE-BB: REFINE through the surrogate (the evaluations during training are of T and M around "
                "the surrogate)")
        quiet = replace(ctx, evaluate=(lambda deployed, epoch, final=False: ctx.evaluate(deployed, epoch))
                        if ctx.evaluate else None)  # the final evaluation is the black box's, by the job
        on_surrogate = super().fit(surrogate, data, quiet)
        if ctx.measure:
            self.report["surrogate"]["REFINE"] = ctx.measure(on_surrogate)
            ctx.log(f"REFINE-BB: surrogate after REFINE: {format_metrics(self.report['surrogate']['REFINE'])}")
        return DeployedModel(frozen_copy(model, ctx.device), on_surrogate.transform, on_surrogate.output_map)

