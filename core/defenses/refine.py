"""REFINE (Chen et al., ICLR 2025): inversion-free backdoor defense by model reprogramming.

A trainable input transform T (a UNet) and a fixed output mapping M (a class derangement) wrap the
frozen, possibly backdoored model F. T is trained on *unlabeled* images x with pseudo-labels
ȳ = argmax F(x):

    L = L_cls(M(F(T(x))), ȳ) + λ · L_supcon(T(x), ȳ)

so T has to move every image to a new region of F's input space (where the trigger no longer
matches the backdoor) while M∘F∘T keeps F's benign predictions.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from ..augment import AUGMENTATIONS
from ..checkpoint import FORMAT as CLASSIFIER_FORMAT
from ..checkpoint import atomic_save, classifier_from_spec, safe_load
from ..data import iterate_batches, memory_format
from ..errors import UserError
from ..metrics import ba_asr, predict
from ..models import Classifier, UNet
from ..seeding import generator
from ..train import EpochState, LossGuard, autocast, lr_factor, make_optimizer, set_lr, try_compiled
from .losses import remapped_loss, supcon_loss
from .remap import LabelRemap, random_derangement

DEFENDED_FORMAT = "refine-toolkit/defended-v1"


class DefendedModel(nn.Module):
    """The deployable defense M∘F∘T: images in [0, 1], N×C×H×W -> logits N×K in the original label space."""

    def __init__(self, unet: UNet, classifier: Classifier, remap: LabelRemap):
        super().__init__()
        self.unet, self.classifier, self.remap = unet, classifier, remap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.remap(self.classifier(self.unet(x)))


def save_defended(path, model: DefendedModel, unet_channels: int, **meta) -> None:
    """One file holding T, F and M, loadable alone with :func:`load_defended`."""
    cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
    atomic_save({"format": DEFENDED_FORMAT, "unet_channels": unet_channels, "unet": cpu(model.unet.state_dict()),
                 "classifier": {"format": CLASSIFIER_FORMAT, "spec": model.classifier.spec,
                                "state_dict": cpu(model.classifier.net.state_dict())},
                 "permutation": model.remap.permutation.cpu(), "meta": meta}, path)


def load_defended(path) -> tuple[DefendedModel, dict]:
    """Loads a defended model saved by refine.py (``weights_only``); returns (model in eval mode, meta)."""
    blob = safe_load(path)
    if blob.get("format") != DEFENDED_FORMAT:
        raise UserError(f"{path} is not a defended model saved by refine.py (look for defended_model.pth in the run)")
    spec = blob["classifier"]["spec"]
    classifier = classifier_from_spec(spec)
    classifier.net.load_state_dict(blob["classifier"]["state_dict"])
    unet = UNet(blob["unet_channels"])
    unet.load_state_dict(blob["unet"])
    model = DefendedModel(unet, classifier, LabelRemap(blob["permutation"]))
    return model.eval(), blob.get("meta", {})


class REFINE:
    """The defense, usable from Python in the style of BackdoorBox::

        defense = core.REFINE(unet=UNet(64), model=backdoored_classifier, num_classes=10, seed=0)
        defense.train(unlabeled_uint8_images, epochs=150)
        labels = defense.predict(x)              # x float in [0, 1], N×C×H×W
        metrics = defense.test(benign_test, poisoned_test)

    ``loss``: 'ce' (paper) or 'bce' (authors' code). ``lam``: weight λ of the supervised contrastive
    term (0 disables it: ablation "w/o SCL"). ``remap=False``: identity mapping (ablation "w/o HRF").
    ``supcon_views``: 2 passes each transformed image twice to SupCon, as the authors' code; 1 once.
    ``pseudo_fp32``: pseudo-labels from an fp32 forward pass even when ``amp`` runs the rest in bf16.
    """

    def __init__(self, unet: UNet, model: Classifier, num_classes: int, seed: int = 0, loss: str = "ce",
                 lam: float = 0.1, temperature: float = 0.07, remap: bool = True, device="cpu", amp: bool = True,
                 supcon_views: int = 2, pseudo_fp32: bool = False):
        if loss not in ("ce", "bce"):
            raise UserError(f"unknown loss {loss!r}; choose ce or bce")
        self.device = torch.device(device)
        self.layout = memory_format(self.device)
        self.unet = unet.to(self.device).to(memory_format=self.layout)
        self.model = model.to(self.device).to(memory_format=self.layout).eval()
        for p in self.model.parameters():  # F is frozen: no gradient to its weights, BN stays in eval mode
            p.requires_grad_(False)
        perm = random_derangement(num_classes, generator(seed, "label-mapping")) if remap else torch.arange(num_classes)
        self.remap = LabelRemap(perm).to(self.device)
        self.loss, self.lam, self.temperature, self.amp, self.seed = loss, lam, temperature, amp, seed
        self.supcon_views, self.pseudo_fp32 = supcon_views, pseudo_fp32

    # -- inference --------------------------------------------------------------------------------
    def defended_model(self) -> DefendedModel:
        return DefendedModel(self.unet, self.model, self.remap)

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
        the augmented batch itself, as the authors' code does. ``unet``/``model``: compiled versions of
        T and F to run instead of the plain modules (same parameters).
        """
        unet = self.unet if unet is None else unet
        model = self.model if model is None else model
        if pseudo is None:
            with torch.no_grad(), autocast(self.device, self.amp and not self.pseudo_fp32):
                pseudo = model(x).argmax(1)  # ȳ: the defender never sees true labels
        with autocast(self.device, self.amp):
            transformed = unet(x)
            remapped = self.remap(model(transformed))
        cls = remapped_loss(remapped, pseudo, self.loss)
        total = cls
        parts = {"cls": cls.detach()}
        if self.lam > 0:
            con = supcon_loss(transformed, pseudo, self.temperature, self.supcon_views)
            total = total + self.lam * con
            parts["supcon"] = con.detach()
        parts["agree"] = (remapped.argmax(1) == pseudo).float().mean().detach()
        return total, parts

    def _backward(self, opt, x, pseudo, **modules) -> tuple[torch.Tensor, dict]:
        """Loss of one batch and its gradients in T's parameters (``modules``: compiled T and F, if any)."""
        loss, parts = self.losses(x, pseudo, **modules)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss, parts

    def train(self, images: torch.Tensor, *, epochs: int = 150, batch_size: int = 256, lr: float = 0.01,
              optimizer: str = "SGD", momentum: float = 0.9, weight_decay: float = 5e-4,
              schedule: str = "multistep", milestones=(100, 130), gamma: float = 0.8, augment: str = "refine",
              pseudo_labels: str = "augmented", compile: bool = False, fused: bool = False,
              state_path=None, fingerprint: dict | None = None, evaluate: Callable[[int], dict] | None = None,
              eval_every: int = 10, log: Callable[[str], None] = print) -> UNet:
        """Trains T on unlabeled uint8 images N×C×H×W (labels are never used).

        ``pseudo_labels``: 'augmented' takes ȳ = argmax F(x) of each augmented batch (the authors' code);
        'clean' computes ȳ once from the un-augmented images (F is frozen, so they never change) and saves
        one forward pass of F per step. ``compile``: run T and F through ``torch.compile`` on full batches
        (falls back to eager mode, with a warning, where compilation fails); ``fused``: fused optimizer
        kernels on CUDA. Resumable through
        ``state_path`` like :func:`core.train.train_classifier`; ``evaluate(epoch)`` runs every
        ``eval_every`` epochs and after the last. A non-finite loss raises ``DivergedError`` and keeps the
        state of the last good epoch (:class:`core.train.LossGuard`).
        """
        if pseudo_labels not in ("augmented", "clean"):
            raise UserError(f"unknown pseudo-label mode {pseudo_labels!r}; choose augmented or clean")
        opt = make_optimizer(self.unet.parameters(), optimizer, lr, momentum, weight_decay, fused=fused)
        state = EpochState(state_path, {"unet": self.unet}, opt, fingerprint or {}) if state_path else None
        start = state.load() if state else 0
        if start:
            log(f"resuming REFINE from the end of epoch {start}/{epochs} ({state_path})")
        images = images.to(self.device)
        if pseudo_labels == "clean":
            labels = self.pseudo_labels(images).to(self.device)
            log(f"pseudo-labels of the {len(labels)} clean images: class counts {torch.bincount(labels).tolist()}")
        else:
            labels = torch.full((len(images),), -1, dtype=torch.int64, device=self.device)  # -1: take F(x) per batch
        fast = {"unet": torch.compile(self.unet), "model": torch.compile(self.model)} if compile else {}
        steps = math.ceil(len(images) / batch_size)
        augment_fn = AUGMENTATIONS[augment]
        guard = LossGuard(every=10)
        for epoch in range(start, epochs):
            self.unet.train()
            guard.start_epoch(epoch, self.device)
            self.model.eval()  # F stays frozen, BatchNorm included
            shuffle = generator(self.seed, "refine-shuffle", epoch)
            aug_gen = generator(self.seed, "refine-augment", epoch, device=self.device)
            sums, seen, t0 = {}, 0, time.time()
            bar = tqdm(iterate_batches(images, labels, batch_size, self.device, shuffle=True, generator=shuffle),
                       total=steps, desc=f"REFINE epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                       disable=None)
            for step, (x, y) in enumerate(bar):
                set_lr(opt, lr, lr_factor(schedule, epoch + step / steps, epochs, milestones, gamma))
                x = augment_fn(x, generator=aug_gen).contiguous(memory_format=self.layout)
                pseudo = y if pseudo_labels == "clean" else None
                # the last, smaller batch runs eagerly: a second compilation for its shape would cost more
                if fast and len(x) == batch_size:
                    (loss, parts), fast = try_compiled(lambda mods: self._backward(opt, x, pseudo, **mods), fast, {},
                                                       log)
                else:
                    loss, parts = self._backward(opt, x, pseudo)
                opt.step()
                guard.update(loss, step)
                seen += len(x)
                for k, v in {"loss": loss.detach(), **parts}.items():
                    sums[k] = sums.get(k, 0) + v * len(x)
                if step % 10 == 0 and not bar.disable:  # .item() waits for the GPU: only for a visible bar
                    bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
            guard.check()  # a diverged epoch is neither logged as done, evaluated nor saved
            means = {k: (v / seen).item() for k, v in sums.items()}
            log(f"REFINE epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
                + f", {seen / (time.time() - t0):.0f} img/s, lr {opt.param_groups[0]['lr']:.5f}")
            if evaluate and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
                evaluate(epoch + 1)
            if state:
                state.save(epoch + 1)
        self.unet.eval()
        return self.unet
