"""REFINE (Chen et al., ICLR 2025): inversion-free backdoor defense by model reprogramming.

A trainable input transform T (a UNet) and a fixed output mapping M (a class derangement) wrap the
frozen, possibly backdoored model F. T is trained on *unlabeled* images x with pseudo-labels
ȳ = argmax F(x):

    L = L_cls(M(F(T(x))), ȳ) + λ · L_supcon(T(x), ȳ)

so T has to move every image to a new region of F's input space (where the trigger no longer
matches the backdoor) while M∘F∘T keeps F's benign predictions.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

import json
from pathlib import Path

from ..augment import AUGMENTATIONS
from ..checkpoint import atomic_write
from ..checks import boolean, choice, integer, number
from ..data import Split, memory_format
from ..errors import UserError
from ..metrics import ba_asr, predict
from ..models import Classifier, UNet
from ..seeding import generator
from ..settings import Setting, with_defaults
from ..train import EpochState, autocast, fit, lr_factor, make_optimizer, training_recipe
from .base import Defense, FitContext, defender_share, frozen_copy, register_defense
from .losses import LOSSES, remapped_loss, supcon_loss
from .parts import DeployedModel, Purifier, register_part
from .remap import LabelRemap, random_derangement

# REFINE's method: everything but the training recipe. Defaults: the paper's (Section 5.1, Appendix C) where it
# says, else the authors' code; ``--preset mini`` and the fidelity switches are in configs/refine/ and docs/.
METHOD = {
    "unet_channels": Setting(64, "first-layer width of the UNet T (the paper: 64 on CIFAR-10, 32 on ImageNet-50; "
                                 "at most 512)", integer(1, 512), aliases=("--unet_channels",)),
    "loss": Setting("bce", "classification loss: bce (the authors' code: BCE between the remapped softmax and the "
                           "one-hot pseudo-label), ce (the paper's Eq. 6) or distill (ours, not in the paper: "
                           "cross-entropy between the remapped softmax and F(x)'s softmax, i.e. soft pseudo-labels)",
                    choice(LOSSES)),
    "unet_input": Setting("normalized", "normalized: T reads the image in the classifier's normalized space and its "
                                        "[0, 1] output goes to F's network un-normalized (the authors' code); "
                                        "pixels: T maps [0, 1] images to [0, 1] images, which F normalizes as any "
                                        "input (ours)", choice(("normalized", "pixels"))),
    "lam": Setting(0.1, "weight λ of the supervised contrastive loss (0: the ablation 'w/o SCL')", number(0),
                   aliases=("--sup",), switches=(("--no-supcon", 0.0),)),
    "temperature": Setting(0.07, "SupCon temperature", number(0, lo_open=True)),
    "remap": Setting(True, "the random label derangement M (false: identity, the ablation 'w/o HRF')", boolean(),
                     switches=(("--no-remap", False),)),
    "supcon_views": Setting(2, "copies of each transformed image in the SupCon loss: 2 as the authors' code (every "
                               "image is also its own positive), 1 as the paper's formula", choice((1, 2))),
    "pseudo_fp32": Setting(False, "pseudo-labels from an fp32 forward pass of F even under bf16 autocast (the "
                                  "authors' code runs everything in fp32; CPUs always do)", boolean()),
    "pseudo_labels": Setting("augmented", "ȳ from each augmented batch (augmented: the authors' code) or once from "
                                          "the clean images (clean: one forward pass of F less per step)",
                             choice(("augmented", "clean"))),
}
# REFINE's training recipe (the paper: SGD 0.01, momentum 0.9, wd 5e-4, batch 256, 150 epochs, lr x0.8 at epochs
# 100 and 130) and its augmentation of the unlabeled images (resized crop + flip + grayscale).
RECIPE = training_recipe(epochs=150, batch_size=256, lr=0.01, gamma=0.8, augment="refine")

@register_part
class NormalizedInputUNet(Purifier):
    """REFINE's T wired as in the authors' code (``unet_input: normalized``): the UNet reads the image normalized
    with the classifier's (``mean``, ``std``), and its output, clamped to [0, 1], is what F's network receives,
    without normalization - F then only ever sees the box [0, 1] of its normalized input space. As a part of
    [0, 1] images N×C×H×W: x -> mean + std · unet(normalize(x)), which F's own normalization maps back to exactly
    unet(normalize(x)). Without a normalization (mean and std None) it is the plain UNet."""

    part_name = "unet-normalized-input"

    def __init__(self, channels: int = 64, mean=None, std=None, unet: UNet | None = None):
        super().__init__(unet if unet is not None else UNet(channels), mean, std)

    def network_input(self, transformed: torch.Tensor) -> torch.Tensor:
        """What F's network receives for this part's output: the UNet's own [0, 1] output."""
        return self.normalize(transformed)

    def part_spec(self) -> dict:
        return {"channels": self.unet.channels, **self.normalization}


class REFINE:
    """The defense, usable from Python in the style of BackdoorBox::

        defense = core.REFINE(unet=UNet(64), model=backdoored_classifier, num_classes=10, seed=0)
        defense.train(unlabeled_uint8_images, epochs=150)
        labels = defense.predict(x)              # x float in [0, 1], N×C×H×W
        metrics = defense.test(benign_test, poisoned_test)

    ``unet``: the input transform T, trained in place (a :class:`UNet`; T-MR passes a universal perturbation).
    With ``unet_input='normalized'`` (the authors' code) a UNet is wrapped in :class:`NormalizedInputUNet` with
    F's normalization; other transforms must use ``'pixels'``. ``model``: F, copied and frozen (the caller's module
    is not modified). ``method``: the settings of :data:`METHOD` but ``unet_channels`` and ``pseudo_labels``
    (``loss``, ``unet_input``, ``lam``, ``temperature``, ``remap``, ``supcon_views``, ``pseudo_fp32``), each
    defaulting to its declaration.
    """

    def __init__(self, unet: nn.Module, model: Classifier, num_classes: int, seed: int = 0, device="cpu",
                 amp: bool = True, **method):
        method = with_defaults({k: s for k, s in METHOD.items() if k not in ("unet_channels", "pseudo_labels")},
                               method, "REFINE")
        loss, lam, temperature, remap = method["loss"], method["lam"], method["temperature"], method["remap"]
        supcon_views, pseudo_fp32 = method["supcon_views"], method["pseudo_fp32"]
        if loss not in LOSSES:
            raise UserError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if method["unet_input"] == "normalized":
            if not isinstance(unet, UNet):
                raise TypeError(f"unet_input='normalized' wraps a UNet, not a {type(unet).__name__}; pass "
                                f"unet_input='pixels'")
            spec = getattr(model, "spec", {})  # a bare network (no Classifier) has no normalization to undo
            unet = NormalizedInputUNet(unet=unet, mean=spec.get("mean"), std=spec.get("std"))
        self.device = torch.device(device)
        self.layout = memory_format(self.device)
        self.unet = unet.to(self.device).to(memory_format=self.layout)
        # F is frozen: a copy without gradients to its weights, BatchNorm in eval mode. The caller's model is
        # left as it was given (fine-tuning it afterwards, e.g. FT + REFINE in one process, still trains it).
        self.model = frozen_copy(model, self.device)
        perm = random_derangement(num_classes, generator(seed, "label-mapping")) if remap else torch.arange(num_classes)
        self.remap = LabelRemap(perm).to(self.device)
        self.loss, self.lam, self.temperature, self.amp, self.seed = loss, lam, temperature, amp, seed
        self.supcon_views, self.pseudo_fp32 = supcon_views, pseudo_fp32

    # -- inference --------------------------------------------------------------------------------
    def defended_model(self) -> DeployedModel:
        """M∘F∘T as one module (parts: ``transform`` = T, ``classifier`` = the frozen copy of F, ``output_map`` = M)."""
        return DeployedModel(self.model, self.unet, self.remap)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """T(x): transformed images in [0, 1], same shape as x."""
        with torch.inference_mode():
            self.unet.eval()
            return self.unet(x.to(self.device))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (N, original label space) that the defended model M∘F∘T gives to x in [0, 1]."""
        with torch.inference_mode():
            self.unet.eval()
            return self.defended_model()(x.to(self.device)).argmax(1)

    def test(self, benign_test, poisoned_test=None, batch_size: int | None = None) -> dict:
        """BA/ASR of the defended model (see :func:`core.metrics.ba_asr`)."""
        self.unet.eval()
        return ba_asr(self.defended_model(), benign_test, poisoned_test, batch_size, self.device)

    # -- training ---------------------------------------------------------------------------------
    def pseudo_labels(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """ȳ = argmax F(x) of un-augmented images (uint8 or [0, 1] float, N×C×H×W) -> int64 N, on CPU."""
        return predict(self.model, images, batch_size, self.device)

    def losses(self, x: torch.Tensor, pseudo: torch.Tensor | None = None, unet=None, model=None
               ) -> tuple[torch.Tensor, dict]:
        """Total loss on one (augmented) batch x in [0, 1], and its parts for logging.

        ``pseudo``: ȳ of the batch if already known (labels of the clean images), else argmax F(x) of
        the augmented batch itself, as the authors' code does. ``loss='distill'`` always takes its soft
        targets softmax F(x) from the batch x itself. ``unet``/``model``: compiled versions of
        T and F to run instead of the plain modules (same parameters). Mixed precision is the caller's (the
        training loop runs this under bf16 autocast on CUDA); the losses themselves are computed in fp32.
        """
        unet = self.unet if unet is None else unet
        model = self.model if model is None else model
        teacher = None
        if pseudo is None or self.loss == "distill":
            with torch.no_grad(), autocast(self.device, self.amp and not self.pseudo_fp32):
                teacher = model(x)  # F(x): the defender never sees true labels
            if pseudo is None:
                pseudo = teacher.argmax(1)
        transformed = unet(x)
        remapped = self.remap(model(transformed))
        # SupCon on T's own output: the [0, 1] images F's network receives when T works in normalized space
        features = self.unet.network_input(transformed) if hasattr(self.unet, "network_input") else transformed
        with torch.autocast(self.device.type, enabled=False):  # fp32 losses (BCE refuses autocast)
            cls = remapped_loss(remapped, pseudo, self.loss, teacher)
            total = cls
            parts = {"cls": cls.detach()}
            if self.lam > 0:
                con = supcon_loss(features, pseudo, self.temperature, self.supcon_views)
                total = total + self.lam * con
                parts["supcon"] = con.detach()
        parts["agree"] = (remapped.argmax(1) == pseudo).float().mean().detach()
        return total, parts

    def train(self, images: torch.Tensor, *, pseudo_labels: str = "augmented", compile: bool = False,
              fused: bool = False, state_path=None, fingerprint: dict | None = None,
              evaluate: Callable[[int], dict] | None = None, eval_every: int = 10,
              log: Callable[[str], None] = print, desc: str = "REFINE epoch", **recipe) -> nn.Module:
        """Trains T on unlabeled uint8 images N×C×H×W (labels are never used), through :func:`core.train.fit`.

        ``recipe``: the settings of :data:`RECIPE` (``epochs``, ``batch_size``, ``lr``, ``optimizer``,
        ``momentum``, ``weight_decay``, ``schedule``, ``milestones``, ``gamma``, ``augment``), each defaulting
        to its declaration (the paper's).

        ``pseudo_labels``: 'augmented' takes ȳ = argmax F(x) of each augmented batch (the authors' code);
        'clean' computes ȳ once from the un-augmented images (F is frozen, so they never change) and saves
        one forward pass of F per step. ``compile``: run T and F through ``torch.compile`` on full batches
        (falls back to eager mode, with a warning, where compilation fails); ``fused``: fused optimizer
        kernels on CUDA. Resumable through ``state_path`` like :func:`core.train.train_classifier`;
        ``evaluate(epoch)`` runs every ``eval_every`` epochs and after the last. A non-finite loss raises
        ``DivergedError`` and keeps the state of the last good epoch (:class:`core.train.LossGuard`).
        ``desc``: the progress lines' prefix (a variant names itself: "T-MR epoch").
        """
        if pseudo_labels not in ("augmented", "clean"):
            raise UserError(f"unknown pseudo-label mode {pseudo_labels!r}; choose augmented or clean")
        recipe = with_defaults(RECIPE, recipe, "REFINE.train")
        epochs, batch_size, lr, optimizer = recipe["epochs"], recipe["batch_size"], recipe["lr"], recipe["optimizer"]
        momentum, weight_decay, schedule = recipe["momentum"], recipe["weight_decay"], recipe["schedule"]
        milestones, gamma, augment = recipe["milestones"], recipe["gamma"], recipe["augment"]
        opt = make_optimizer(self.unet.parameters(), optimizer, lr, momentum, weight_decay, fused=fused)
        images = images.to(self.device)
        if pseudo_labels == "clean":
            labels = self.pseudo_labels(images).to(self.device)
            log(f"pseudo-labels of the {len(labels)} clean images: class counts {torch.bincount(labels).tolist()}")
        else:
            labels = torch.full((len(images),), -1, dtype=torch.int64, device=self.device)  # -1: take F(x) per batch
        augment_fn = AUGMENTATIONS[augment]

        def prepare(x, y, extra, rng):
            return augment_fn(x, generator=rng("augment")).contiguous(memory_format=self.layout)

        def loss_fn(x, y, mods):
            return self.losses(x, y if pseudo_labels == "clean" else None, unet=mods["unet"], model=mods["model"])

        modules = {"unet": self.unet, "model": self.model}
        fit(loss_fn, modules, images, labels, optimizer=opt, epochs=epochs, batch_size=batch_size,
            device=self.device, seed=self.seed, streams="refine-", trainable=("unet",), prepare=prepare, lr=lr,
            amp=self.amp,
            lr_at=lambda progress: lr_factor(schedule, progress, epochs, milestones, gamma), compile=compile,
            state=EpochState(state_path, {"unet": self.unet}, opt, fingerprint or {}) if state_path else None,
            evaluate=evaluate, eval_every=eval_every, log=log, desc=desc, guard_every=10)
        self.unet.eval()
        return self.unet


@register_defense
class RefineDefense(Defense):
    """REFINE behind the common defense interface (``refine.py`` / ``defend.py --defense REFINE``): trains T
    on the defender's *unlabeled* images; the deployed model is M∘F∘T with the given model F frozen."""

    name = "REFINE"
    order = 0
    summary = "UNet input transform + label derangement around the frozen model, unlabeled data (the paper)"
    preset_task = "refine"
    output_root, own_folder = "refine_res", False  # the official repository's layout
    settings = {**METHOD, **RECIPE, "data_fraction": defender_share(1.0)}

    def transform(self, data: Split) -> nn.Module:
        """T before training (T-MR overrides it)."""
        return UNet(self.unet_channels)

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        torch.manual_seed(ctx.seed)  # T's initial weights
        method = {k: self.values[k] for k in METHOD if k in self.values and k not in ("unet_channels", "pseudo_labels")}
        method.setdefault("unet_input", "pixels")  # a defense without the setting (T-MR) transforms pixels
        refine = REFINE(self.transform(data), model, model.spec["num_classes"], seed=ctx.seed, device=ctx.device,
                        amp=ctx.amp, **method)
        ctx.log(f"label mapping (class j -> position): {refine.remap.permutation.tolist()}")

        def evaluate(epoch):
            return ctx.evaluate(refine.defended_model(), epoch, final=epoch == self.epochs)

        refine.train(data.images, **{k: self.values[k] for k in RECIPE}, pseudo_labels=self.pseudo_labels,
                     compile=ctx.compile, fused=ctx.fused, state_path=ctx.state_path("train_state.pth"),
                     fingerprint=ctx.fingerprint, evaluate=evaluate if ctx.evaluate else None,
                     eval_every=ctx.eval_every, log=ctx.log, desc=f"{self.name} epoch")
        return refine.defended_model()

    def write_outputs(self, deployed: DeployedModel, folder: Path) -> list[Path]:
        """label_mapping.json: the derangement M, readable without the toolkit."""
        permutation = getattr(deployed.output_map, "permutation", None)
        if permutation is None:
            return []
        path = Path(folder) / "label_mapping.json"
        text = json.dumps({"permutation": permutation.tolist(),
                           "meaning": "the score of original class j is moved to position permutation[j]"}, indent=2)
        atomic_write(path, lambda fh: fh.write(text.encode()))
        return [path]
