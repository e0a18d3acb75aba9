"""BTI-DBF (Xu et al., ICLR 2024): backdoor trigger inversion by decoupling benign features.

The defender holds a small labelled benign set (5 % of the training set in the paper) and the possibly
backdoored classifier f = h ∘ f_b, where f_b is the backbone up to its last convolutional stage and h the
rest (pooling + linear head). Everything below runs in the model's *normalized* input space, as in the
authors' code: images x in [0, 1] are normalized once (``model.normalize``) and the generators map
normalized images to normalized images, without clamping.

1. Decoupling benign features (:func:`decouple_mask`): a soft mask m = tanh(w)/2 + 0.5 over f_b's output
   (C×h×w) such that the masked features m⊙f_b(x) keep the benign prediction and the complement
   (1−m)⊙f_b(x) loses it (:func:`decoupling_loss`).
2. Trigger inversion (:func:`pretrain_generator`, :func:`train_generator`): a UNet G, first trained toward
   the identity, then trained so that G(x) stays close to x and keeps the benign features m⊙f_b(x) while
   moving the others, (1−m)⊙f_b(x), as far as it can: G(x) are the "inverted poisoned images".
3. Target detection (:func:`detect_target`): majority vote of f(G(x + noise)) over the defender's data.
   Steps 1–3 alone: :func:`invert_trigger`.
4. BTI-DBF(U) (:func:`bti_dbf_unlearn`): rounds of (a fresh mask, G trained further, fine-tuning of a copy
   of the model so that G(x) is classified as y and keeps the features of x).
5. BTI-DBF(P) (:func:`bti_dbf_purify`): rounds of (a fresh mask, G trained further against the current
   purifier, a purification UNet P trained to map x and G(x) back to x); the deployable defense is the
   original model behind a :class:`Purifier`.

f_b and h are the network's ``forward_features`` and ``forward_head`` (:func:`features`, :func:`head`), which
every classifier of :mod:`core.models` has: the CIFAR ResNets, VGG16, DenseNet121, the ViT and torchvision's
ImageNet ResNets. For the CNNs f_b ends with the last convolutional stage (the mask is C×h×w); for the ViT it
is the normed token sequence (the mask is tokens × dimensions, and h reads the class token only). The
generator G is :class:`core.models.GeneratorUNet`.

Every phase runs through :func:`core.train.fit` (mixed precision, frozen modules, the divergence guard). With
a state folder, (U) and (P) are resumable by stage (:class:`core.train.Stages`): each phase of each round is
saved at every epoch end, so a stopped run skips the phases it finished and continues the one it was in,
to the result of an uninterrupted run.

Deviations from the authors' code (github.com/xuxiong0214/BTIDBF), each for a stated reason:

* The given model is never modified: (U) fine-tunes a deep copy; every other phase runs on a frozen copy, or
  (the mask, see below) on a deep copy of its own. The authors' detection-only ``btidbf.py`` trains the mask
  on the classifier itself, in training mode, and so changes its BatchNorm statistics.
* Identity pre-training: the authors compute ``CE(softmax(f(x)), softmax(f(G(x))))``: probabilities used
  as logits, and the prediction on G(x) (with its gradient) as the target. Here it is the cross-entropy of
  f(G(x))'s logits against the soft target softmax(f(x)) (detached): what the term is meant to be.
* The target vote runs on the un-augmented images (the authors vote on their augmented training loader).
* The authors' optional early stop of the rounds (``--earlystop``: stop when the vote changes) is left out.
* (P) follows the authors' ``btidbfp.py`` (P starts as a copy of the identity-pre-trained G; 10 % + 1 of each
  batch replaced by G(x), noise 0.03, loss CE + feature MSE + pixel MSE weighted 100 above 0.05, else 1; G
  trained through P from round 2 on), not the shorter recipe CE(f(P(x)), y) + CE(f(P(G(x))), y) + MSE(P(x), x).
  P is trained in normalized space without the [0, 1] clamp that :class:`Purifier` applies when deployed.

Two choices of the authors' code are settings whose default is theirs, with this toolkit's former behaviour
(version 1 of the defenses) as the alternative:

* ``mask_model_mode``: "train" (the authors' ``reverse()``): the mask is learned on a deep copy of the model in
  training mode, so f_b(x) uses batch statistics and the copy's BatchNorm running statistics drift over the
  defender's images during the mask epochs; that drifted copy, in eval mode, is then the model of the round's
  inversion (G's features and the target term), while the identity pre-training and the target vote read the
  model itself (in the detection-only :func:`invert_trigger`, as ``btidbf.py``, the vote reads the drifted
  copy too). "eval" (ours): the mask and the inversion use the model frozen in eval mode, so that they see the
  features the deployed model computes and f_b(x) does not depend on the batch.
* ``unlearn_anchor`` ((U)): "trained" (the authors' ``unlearn()``): the gradient of the feature term flows
  through the clean features f_b(x) as well as through f_b(x_mix). "detached" (ours): f_b(x) is a fixed anchor
  (see :func:`unlearning_loss`). In both, both forward passes run in training mode and update BatchNorm.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import random_crop_flip
from ..data import Split, iterate_batches, memory_format
from ..errors import UserError
from ..models import Classifier, GeneratorUNet
from ..seeding import derive_seed, generator
from ..train import RandomStream, Stages, autocast, fit, frozen, make_optimizer, resolve_device
from ..checks import choice, integer, learning_rate, number
from ..settings import from_dataclass
from .base import Defense, FitContext, defender_share, frozen_copy, register_defense
from .parts import DeployedModel, Purifier


def _declared(default, help_text: str, check=None):
    """A field of :class:`BTIDBFConfig` that also declares the setting (core.settings.from_dataclass)."""
    return field(default=default, metadata={"help": help_text, **({"check": check} if check else {})})


@dataclass
class BTIDBFConfig:
    """Hyper-parameters of BTI-DBF; defaults are the authors' CIFAR-10 values.

    Epoch counts are passes over the defender's data; every optimizer is Adam without weight decay.
    """

    batch_size: int = _declared(128, "batch size of every phase", integer(1))
    augment: bool = _declared(True, "random crop (zero padding crop_padding) + horizontal flip on every batch")
    crop_padding: int = _declared(4, "padding of the random crop")
    # (1) decoupling benign features
    mask_epochs: int = _declared(20, "epochs of the feature mask (each round)", integer(0))
    mask_lr: float = _declared(0.01, "learning rate of the feature mask", learning_rate())
    mask_model_mode: str = _declared(
        "train", "mode of the model the mask is learned on: train (the authors' btidbfu.py/btidbfp.py reverse(): a "
                 "deep copy in training mode, whose BatchNorm running statistics drift over the defender's images "
                 "during the mask epochs; that drifted copy, in eval mode, is the model of the round's inversion) or "
                 "eval (ours, this toolkit's version 1: the model frozen in eval mode, so that the mask and G see "
                 "the features the deployed model computes)", choice(("train", "eval")))
    # (2) the generators (trigger G and purifier P): UNet width and depth
    generator_channels: int = _declared(32, "first-layer width of the generators G and P (at most 512: wider "
                                            "stages are capped there anyway)", integer(1, 512))
    generator_blocks: int = _declared(4, "encoder blocks of the generators, each halving the resolution: at most "
                                         "log2(image side) - 1", integer(1))
    # identity pre-training of G
    pretrain_epochs: int = _declared(50, "epochs of G's identity pre-training", integer(0))
    pretrain_lr: float = _declared(1e-3, "learning rate of G's identity pre-training", learning_rate())
    pretrain_pixel_bound: float = _declared(0.1, "pre-training: pixel MSE above this gets weight pretrain_pixel_high, "
                                                 "else pretrain_pixel_low")
    pretrain_pixel_high: float = _declared(100.0, "pre-training: weight of a pixel MSE above the bound")
    pretrain_pixel_low: float = _declared(0.01, "pre-training: weight of a pixel MSE below the bound")
    # inversion
    inversion_epochs: int = _declared(30, "epochs of the trigger inversion (each round)", integer(0))
    generator_lr: float = _declared(1e-3, "learning rate of G in the inversion", learning_rate())
    norm_bound: float = _declared(0.3, "inversion: L_norm above this, or L_ben above ben_bound, makes the step "
                                       "minimise L_norm only")
    ben_bound: float = _declared(3.0, "inversion: bound of L_ben (see norm_bound)")
    ben_weight: float = _declared(0.01, "inversion: the loss otherwise is -L_bd + ben_weight * L_ben")
    target_weight: float = _declared(1.0, "(U) and (P), rounds >= 2: weight of CE(f(G(x)), detected target)")
    # (3) target detection
    vote_noise: float = _declared(0.03, "std of the Gaussian noise added (normalized space) before G in the vote")
    # (4) BTI-DBF(U) and (5) BTI-DBF(P)
    rounds: int = _declared(5, "rounds of mask, inversion and unlearning / purification", integer(1))
    mix_fraction: float = _declared(0.1, "int(mix_fraction * batch + mix_extra) images of each batch are replaced "
                                         "by G(x)", number(0, 1))
    mix_extra: int = _declared(1, "see mix_fraction")
    # (4) BTI-DBF(U)
    unlearn_epochs: int = _declared(30, "(U): unlearning epochs (each round)", integer(0))
    unlearn_lr: float = _declared(1e-4, "(U): unlearning learning rate", learning_rate())
    unlearn_feature_weight: float = _declared(1.0, "(U): weight of MSE(f_b(x_mix), f_b(x))")
    unlearn_anchor: str = _declared(
        "trained", "(U): the clean features f_b(x) of MSE(f_b(x_mix), f_b(x)): trained (the authors' btidbfu.py "
                   "unlearn(): the gradient flows through both feature tensors) or detached (ours, this toolkit's "
                   "version 1: a fixed anchor, so that the term pulls the features of G(x) to the clean ones and "
                   "not also the clean features toward the backdoor ones)", choice(("trained", "detached")))
    # (5) BTI-DBF(P)
    purify_epochs: int = _declared(30, "(P): purifier epochs (each round)", integer(0))
    purify_lr: float = _declared(1e-3, "(P): purifier learning rate", learning_rate())
    purify_noise: float = _declared(0.03, "(P): std of the Gaussian noise added (normalized space) to P's input")
    purify_norm_bound: float = _declared(0.05, "(P): pixel MSE above this gets weight purify_pixel_high, else "
                                               "purify_pixel_low")
    purify_pixel_high: float = _declared(100.0, "(P): weight of a pixel MSE above the bound")
    purify_pixel_low: float = _declared(1.0, "(P): weight of a pixel MSE below the bound")
    purify_feature_weight: float = _declared(1.0, "(P): weight of MSE(f_b(P(x~)), f_b(x))")

    def as_dict(self) -> dict:
        return asdict(self)


# -- the split f = h ∘ f_b ------------------------------------------------------------------------------
def _split(model: nn.Module) -> nn.Module:
    """``model.net`` once it is known to have the split (``forward_features``/``forward_head``)."""
    net = getattr(model, "net", None)
    if not isinstance(model, Classifier) or not all(callable(getattr(net, m, None))
                                                    for m in ("forward_features", "forward_head")):
        name = getattr(model, "spec", {}).get("model", type(net if net is not None else model).__name__)
        raise UserError(f"BTI-DBF needs the backbone/head split of the classifier (net.forward_features and "
                        f"net.forward_head, as every network of core.models has); got {name}")
    return net


def features(model: Classifier, x_normalized: torch.Tensor) -> torch.Tensor:
    """f_b: normalized images N×3×H×W -> the backbone's output, ``model.net.forward_features``: the last
    convolutional stage's N×C×h×w for the CNNs (a CIFAR ResNet's ``layer4``: N×(8·width·expansion)×H/8×W/8,
    e.g. N×512×4×4 for a width-64 ResNet-18 on 32×32 images), the normed token sequence N×T×D for the ViT."""
    return _split(model).forward_features(x_normalized)


def head(model: Classifier, feats: torch.Tensor) -> torch.Tensor:
    """h: features (as :func:`features` gives) -> logits N×num_classes, ``model.net.forward_head`` (pooling,
    flatten, linear; the ViT's reads the class token)."""
    return _split(model).forward_head(feats)


def feature_shape(model: Classifier, image_shape) -> tuple[int, ...]:
    """The shape of f_b's output for one image of shape (C, H, W): C×h×w (CNNs) or T×D (ViT)."""
    with frozen(model), torch.no_grad():
        probe = torch.zeros(1, *image_shape, device=_device_of(model))
        return tuple(features(model, probe).shape[1:])


# -- the generators ------------------------------------------------------------------------------------
def build_generator(cfg: BTIDBFConfig | None = None, seed: int = 0, tag: str = "trigger") -> GeneratorUNet:
    """A freshly initialised :class:`GeneratorUNet` (CPU) of ``cfg``'s size, its weights drawn from ``seed``
    and ``tag`` only (the global random state is left as it was)."""
    cfg = cfg or BTIDBFConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "bti-dbf-generator-init", tag))
        return GeneratorUNet(cfg.generator_channels, cfg.generator_blocks)


# -- shared machinery ----------------------------------------------------------------------------------
def _frozen_copy(model: Classifier, device: torch.device) -> Classifier:
    """A deep copy of ``model`` on ``device``, in eval mode, without gradients to its parameters."""
    _split(model)
    return frozen_copy(model, device)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _on_device(data: Split, device: torch.device) -> Split:
    return Split(data.images.to(device), data.labels.to(device), data.classes, data.source)


def _adam(params, lr: float):
    return make_optimizer(params, "adam", lr, weight_decay=0.0)


def _stage(tag, phase: str) -> str:
    """The stage name of a phase in a resumable run (:class:`core.train.Stages`): ``round2/mask`` for the
    round index 1, ``<tag>/<phase>`` for a named tag."""
    return f"round{tag + 1}/{phase}" if isinstance(tag, int) else f"{tag}/{phase}"


def _run_epochs(name: str, epochs: int, step: Callable, optimizer, data: Split, cfg: BTIDBFConfig,
                device: torch.device, seed: int, tags: tuple, log: Callable[[str], None], hint: str, *,
                amp: bool, modules: dict | None = None, frozen: tuple = (), stages: Stages | None = None,
                stage: str = "", parts: dict | None = None, scratch: tuple = ()) -> dict[str, float]:
    """``epochs`` passes of :func:`core.train.fit` over ``data`` (shuffled, random crop + flip when
    ``cfg.augment``): ``step(x, y, mods) -> (loss, parts)`` is the forward pass (under fit's autocast when
    ``amp``), ``optimizer`` steps. ``modules``: what the phase trains (training mode during its epochs);
    ``frozen``: the modules it only reads. Each phase and round (``tags``) has its own random streams. With
    ``stages`` the phase is the stage ``stage`` of a resumable run, saving ``parts`` (``scratch``: see
    :class:`core.train.Stages`) at every epoch end. Logs one line; returns the mean of each part over the
    last epoch."""
    layout = memory_format(device)
    modules = modules or {}

    def prepare(x, y, extra, rng):
        if cfg.augment:
            x = random_crop_flip(x, cfg.crop_padding, generator=rng("augment"))
        return x.contiguous(memory_format=layout)

    state = stages.state(stage, parts or {}, scratch) if stages is not None else None
    means = fit(step, modules, data.images, data.labels, optimizer=optimizer, epochs=epochs, batch_size=cfg.batch_size,
                device=device, seed=seed, streams="bti-dbf-" + "-".join(map(str, tags)) + "-",
                trainable=tuple(modules), frozen=frozen, prepare=prepare, amp=amp, state=state, log=log,
                desc=f"BTI-DBF {name}", hint=hint, log_epochs=False)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in means.items())
    log(f"BTI-DBF {name}: {epochs} epochs" + (f", last epoch: {summary}" if summary else ""))
    return means


def _weighted(value: torch.Tensor, bound: float, high: float, low: float) -> torch.Tensor:
    """``high · value`` where value > bound, else ``low · value`` (no host synchronisation)."""
    return torch.where(value > bound, high, low) * value


def _check_rounds(cfg: BTIDBFConfig, name: str) -> None:
    if cfg.rounds < 1:
        raise UserError(f"{name} needs at least one round, got rounds={cfg.rounds}")


def mix_count(batch: int, cfg: BTIDBFConfig) -> int:
    """How many images of a batch of ``batch`` are replaced by G(x): int(mix_fraction · batch + mix_extra),
    at most the batch (13 of 128 with the defaults)."""
    return min(batch, int(cfg.mix_fraction * batch + cfg.mix_extra))


def _mix(xn: torch.Tensor, gen: nn.Module, cfg: BTIDBFConfig, mix_gen: torch.Generator) -> torch.Tensor:
    """``xn`` (normalized N×C×H×W) with :func:`mix_count` rows at random positions replaced by G(x) (no grad)."""
    picks = torch.randperm(len(xn), generator=mix_gen, device=xn.device)[:mix_count(len(xn), cfg)]
    with torch.no_grad():
        inverted = gen(xn[picks]).to(xn.dtype)
    return xn.index_copy(0, picks, inverted)


# -- (1) decoupling benign features -----------------------------------------------------------------------
def mask_from_logits(w: torch.Tensor) -> torch.Tensor:
    """m = tanh(w)/2 + 0.5: unconstrained logits (any shape) -> a soft mask in [0, 1] of the same shape."""
    return torch.tanh(w) / 2 + 0.5


def decoupling_loss(model: Classifier, mask: torch.Tensor, feats: torch.Tensor, y: torch.Tensor
                    ) -> tuple[torch.Tensor, dict]:
    """L_m = CE(h(m⊙f_b(x)), y) − CE(h((1−m)⊙f_b(x)), y), and its two parts.

    ``mask``: f_b's output shape (C×h×w; T×D for the ViT) in [0, 1]; ``feats``: f_b(x), N×C×h×w (N×T×D);
    ``y``: int64 N.
    """
    kept = F.cross_entropy(head(model, mask * feats).float(), y)
    removed = F.cross_entropy(head(model, (1 - mask) * feats).float(), y)
    return kept - removed, {"ce_benign": kept.detach(), "ce_complement": removed.detach()}


class _Buffers:
    """A module's buffers (BatchNorm running statistics) as a part of a resumable stage (:class:`Stages`)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def state_dict(self) -> dict:
        return {name: b.detach().clone() for name, b in self.module.named_buffers()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, b in self.module.named_buffers():
                b.copy_(state[name])


def decouple_mask(model: Classifier, data: Split, cfg: BTIDBFConfig | None = None, *, seed: int = 0, tag=0,
                  init_logits: torch.Tensor | None = None, amp: bool = True,
                  log: Callable[[str], None] = print, stages: Stages | None = None) -> torch.Tensor:
    """Learns the benign-feature mask m: returns it detached, of f_b's output shape (C×h×w for the CNNs, T×D
    tokens × dimensions for the ViT) with values in [0, 1], on ``model``'s device.

    ``model``: a :class:`Classifier` (any network of :mod:`core.models`); never modified (weights, BatchNorm
    statistics, modes). With ``cfg.mask_model_mode`` "train" (the authors') the mask is learned on a deep copy
    in training mode (batch statistics; the copy's running statistics drift), with "eval" on ``model`` frozen
    in eval mode. ``data``: the defender's labelled benign images (uint8 N×C×H×W, int64 N). ``tag``:
    distinguishes the random streams of repeated calls (rounds). ``init_logits``: w at the start (default:
    standard normal, drawn from ``seed`` and ``tag``). Adam (``cfg.mask_lr``) for ``cfg.mask_epochs`` epochs on
    :func:`decoupling_loss`. ``stages``: the run's resumable state (stage ``round<tag + 1>/mask``).
    """
    return _decouple(model, data, cfg, seed=seed, tag=tag, init_logits=init_logits, amp=amp, log=log,
                     stages=stages)[0]


def _decouple(model: Classifier, data: Split, cfg: BTIDBFConfig | None = None, *, seed: int = 0, tag=0,
              init_logits: torch.Tensor | None = None, amp: bool = True, log: Callable[[str], None] = print,
              stages: Stages | None = None) -> tuple[torch.Tensor, Classifier]:
    """:func:`decouple_mask`, returning (the mask, the model of the round's inversion): with
    ``cfg.mask_model_mode`` "train" the copy the mask was learned on (its BatchNorm statistics drifted, in eval
    mode, frozen), as the authors' ``reverse()``; with "eval" ``model`` itself."""
    cfg = cfg or BTIDBFConfig()
    device = _device_of(model)
    data = _on_device(data, device)
    shape = feature_shape(model, data.images.shape[1:])
    if init_logits is None:
        init_logits = torch.randn(shape, generator=generator(seed, "bti-dbf-mask-init", tag))
    w = nn.Parameter(init_logits.detach().clone().float().to(device))
    opt = _adam([w], cfg.mask_lr)
    drift = cfg.mask_model_mode == "train"
    # "train": the authors' deep copy in training mode (fit puts it in training mode every epoch; no weight is
    # trained, but its BatchNorm layers use batch statistics and update their running ones). "eval": ``model``
    # stays frozen in eval mode (see the module docstring), so f_b(x) are the features the deployed model computes.
    net = _frozen_copy(model, device) if drift else model
    parts = {"logits": nn.ParameterList([w]), "optimizer": opt, **({"buffers": _Buffers(net)} if drift else {})}

    def step(x, y, mods):
        with torch.no_grad():  # f_b does not depend on m: no graph needed (BatchNorm still updates in train mode)
            feats = features(net, net.normalize(x)).float()
        return decoupling_loss(net, mask_from_logits(w), feats, y)

    _run_epochs(f"decoupling mask ({tag})", cfg.mask_epochs, step, opt, data, cfg, device, seed, ("mask", tag), log,
                "lower the mask learning rate", amp=amp, modules={"classifier": net} if drift else None,
                frozen=() if drift else (net,), stages=stages, stage=_stage(tag, "mask"), parts=parts,
                scratch=("optimizer",))
    return mask_from_logits(w.detach()), net


# -- (2) the trigger generator ----------------------------------------------------------------------------
def pretrain_loss(logits_x: torch.Tensor, logits_g: torch.Tensor, feats_x: torch.Tensor, feats_g: torch.Tensor,
                  x: torch.Tensor, g: torch.Tensor, cfg: BTIDBFConfig) -> tuple[torch.Tensor, dict]:
    """Identity pre-training loss of G on one batch (normalized space; x: N×C×H×W, g = G(x)):

    CE(f(G(x)), softmax(f(x))) + MSE(f_b(G(x)), f_b(x)) + w · MSE(G(x), x), with w = ``cfg.pretrain_pixel_high``
    while the pixel MSE is above ``cfg.pretrain_pixel_bound`` and ``cfg.pretrain_pixel_low`` otherwise.
    ``logits_x``/``feats_x`` (of x) are targets and are detached here.
    """
    soft = logits_x.detach().float().softmax(1)
    l_pred = F.cross_entropy(logits_g.float(), soft)
    l_feat = F.mse_loss(feats_g.float(), feats_x.detach().float())
    l_pix = F.mse_loss(g.float(), x.float())
    loss = l_pred + l_feat + _weighted(l_pix, cfg.pretrain_pixel_bound, cfg.pretrain_pixel_high, cfg.pretrain_pixel_low)
    return loss, {"pred": l_pred.detach(), "feat": l_feat.detach(), "pixel": l_pix.detach()}


def pretrain_generator(model: Classifier, gen: nn.Module, data: Split, cfg: BTIDBFConfig | None = None, *,
                       seed: int = 0, amp: bool = True, log: Callable[[str], None] = print,
                       stages: Stages | None = None) -> nn.Module:
    """Trains ``gen`` (in place, moved to ``model``'s device) toward the identity: Adam ``cfg.pretrain_lr``,
    ``cfg.pretrain_epochs`` epochs of :func:`pretrain_loss`. ``model`` is used frozen. ``stages``: the run's
    resumable state (stage ``pretrain``). Returns ``gen``, in eval mode."""
    cfg = cfg or BTIDBFConfig()
    device = _device_of(model)
    data = _on_device(data, device)
    gen.to(device).to(memory_format=memory_format(device))
    opt = _adam(gen.parameters(), cfg.pretrain_lr)

    def step(x, y, mods):
        xn = model.normalize(x)
        with torch.no_grad():
            feats_x = features(model, xn)
            logits_x = head(model, feats_x)
        g = mods["generator"](xn)
        feats_g = features(model, g)
        logits_g = head(model, feats_g)
        return pretrain_loss(logits_x, logits_g, feats_x, feats_g, xn, g, cfg)

    _run_epochs("generator pre-training (identity)", cfg.pretrain_epochs, step, opt, data, cfg, device, seed,
                ("pretrain",), log, "lower the pre-training learning rate", amp=amp, modules={"generator": gen},
                frozen=(model,), stages=stages, stage="pretrain", parts={"generator": gen, "optimizer": opt},
                scratch=("optimizer",))
    gen.eval()
    return gen


def inversion_loss(l_norm: torch.Tensor, l_ben: torch.Tensor, l_bd: torch.Tensor, norm_bound: float = 0.3,
                   ben_bound: float = 3.0, ben_weight: float = 0.01) -> torch.Tensor:
    """The inversion objective of one step, switched without host synchronisation (``torch.where``).

    If L_norm > ``norm_bound`` or L_ben > ``ben_bound`` (strictly): L_norm alone (bring G(x) back near x);
    otherwise −L_bd + ``ben_weight`` · L_ben (move the backdoor features, keep the benign ones). Inputs are
    tensors of one shape (scalars in training); the result has that shape, and gradient only through the
    branch taken.
    """
    exceeded = (l_norm > norm_bound) | (l_ben > ben_bound)
    return torch.where(exceeded, l_norm, -l_bd + ben_weight * l_ben)


def train_generator(model: Classifier, gen: nn.Module, mask: torch.Tensor, data: Split,
                    cfg: BTIDBFConfig | None = None, *, target: int | None = None, through: nn.Module | None = None,
                    epochs: int | None = None, optimizer: torch.optim.Optimizer | None = None, seed: int = 0,
                    tag=0, amp: bool = True, log: Callable[[str], None] = print,
                    stages: Stages | None = None) -> nn.Module:
    """Trigger inversion: trains ``gen`` (in place, moved to ``model``'s device) against the frozen ``model``.

    Per batch (normalized x; x̂ = G(x), or P(G(x)) with ``through`` = P, a frozen module applied after G):
    L_ben = MSE(m⊙f_b(x̂), m⊙f_b(x)), L_bd = MSE((1−m)⊙f_b(x̂), (1−m)⊙f_b(x)), L_norm = MSE(x̂, x);
    loss = :func:`inversion_loss`, plus ``cfg.target_weight`` · CE(f(x̂), ``target``) when ``target`` is given
    ((U) and (P) from the second round on). ``mask``: f_b's output shape (C×h×w; T×D for the ViT) in [0, 1].
    ``epochs``: default ``cfg.inversion_epochs``. ``optimizer``: an optimizer over ``gen``'s parameters to
    continue with (default: a new Adam, lr ``cfg.generator_lr``). ``tag``: the round, for distinct random
    streams. ``stages``: the run's resumable state (stage ``round<tag + 1>/invert``). Returns ``gen``, in eval
    mode.
    """
    cfg = cfg or BTIDBFConfig()
    device = _device_of(model)
    data = _on_device(data, device)
    epochs = cfg.inversion_epochs if epochs is None else epochs
    gen.to(device).to(memory_format=memory_format(device))
    opt = optimizer or _adam(gen.parameters(), cfg.generator_lr)
    m = mask.to(device).float()
    post = through if through is not None else nn.Identity()

    def step(x, y, mods):
        xn = model.normalize(x)
        with torch.no_grad():
            fx = features(model, xn).float()
        g = post(mods["generator"](xn))
        fg = features(model, g)
        logits_g = head(model, fg) if target is not None else None
        fg = fg.float()
        l_ben = F.mse_loss(m * fg, m * fx)
        l_bd = F.mse_loss((1 - m) * fg, (1 - m) * fx)
        l_norm = F.mse_loss(g.float(), xn)
        loss = inversion_loss(l_norm, l_ben, l_bd, cfg.norm_bound, cfg.ben_bound, cfg.ben_weight)
        parts = {"ben": l_ben.detach(), "bd": l_bd.detach(), "norm": l_norm.detach(),
                 "norm_steps": ((l_norm > cfg.norm_bound) | (l_ben > cfg.ben_bound)).float()}
        if target is not None:
            l_target = F.cross_entropy(logits_g.float(), torch.full_like(y, target))
            loss = loss + cfg.target_weight * l_target
            parts["target_ce"] = l_target.detach()
        return loss, parts

    _run_epochs(f"trigger inversion ({tag})", epochs, step, opt, data, cfg, device, seed, ("invert", tag), log,
                "lower the generator learning rate", amp=amp, modules={"generator": gen}, frozen=(model, post),
                stages=stages, stage=_stage(tag, "invert"), parts={"generator": gen, "optimizer": opt},
                scratch=() if optimizer is not None else ("optimizer",))
    gen.eval()
    return gen


# -- (3) target label detection ---------------------------------------------------------------------------
def detect_target(model: Classifier, gen: nn.Module, data: Split, *, noise: float = 0.03, batch_size: int = 128,
                  seed: int = 0, amp: bool = True) -> tuple[int, torch.Tensor]:
    """Majority vote of argmax f(G(x + noise·ε)) over ``data``'s images (un-augmented; labels unused),
    ε ~ N(0, 1) in normalized space, drawn from ``seed``. Runs on ``model``'s device under inference mode;
    ``model`` and ``gen`` are used frozen.

    Returns (target class, votes: int64 tensor of length num_classes on the CPU, summing to len(data)).
    Ties go to the lowest class index.
    """
    device = _device_of(model)
    noise_gen = generator(seed, "bti-dbf-vote-noise", device=device)
    votes = None
    with frozen(model, gen), torch.inference_mode():
        for x, _ in iterate_batches(data.images, data.labels, batch_size, device):
            xn = model.normalize(x.contiguous(memory_format=memory_format(device)))
            eps = torch.randn(xn.shape, generator=noise_gen, device=device, dtype=xn.dtype)
            with autocast(device, amp):
                logits = head(model, features(model, gen(xn + noise * eps)))
            counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1])
            votes = counts if votes is None else votes + counts
    if votes is None:
        raise UserError("BTI-DBF's target vote needs at least one image")
    votes = votes.cpu()
    return int(votes.argmax()), votes


def _vote(model, gen, data, cfg, seed, amp, log, stages: Stages | None = None) -> tuple[int, torch.Tensor]:
    """:func:`detect_target` with ``cfg``'s noise and batch size, as the stage ``vote`` of a resumable run."""
    def vote():
        return detect_target(model, gen, data, noise=cfg.vote_noise, batch_size=cfg.batch_size, seed=seed, amp=amp)

    target, votes = stages.once("vote", vote) if stages is not None else vote()
    log(f"BTI-DBF target vote: class {target} (votes per class {votes.tolist()})")
    return int(target), votes


def invert_trigger(model: Classifier, data: Split, cfg: BTIDBFConfig | None = None, *, device=None, seed: int = 0,
                   amp: bool = True, log: Callable[[str], None] = print) -> tuple[GeneratorUNet, torch.Tensor, dict]:
    """BTI-DBF's trigger inversion on a frozen copy of ``model``: mask, identity pre-training, inversion, vote.

    ``data``: the defender's labelled benign images (uint8 N×C×H×W, int64 N). Returns (G in eval mode on
    ``device``, mask of f_b's output shape (C×h×w; T×D for the ViT) in [0, 1], info ``{'target': int,
    'votes': int64 tensor (num_classes)}``). ``model`` is not modified. With ``cfg.mask_model_mode`` "train" the
    inversion and the vote read the copy the mask was learned on (its BatchNorm statistics drifted), as the
    authors' ``btidbf.py`` does with the classifier itself; the pre-training reads the model as given.
    """
    cfg = cfg or BTIDBFConfig()
    device = resolve_device(device)
    frozen_model = _frozen_copy(model, device)
    data = _on_device(data, device)
    log("BTI-DBF: trigger inversion")
    mask, inv_model = _decouple(frozen_model, data, cfg, seed=seed, tag=0, amp=amp, log=log)
    gen = build_generator(cfg, seed)
    pretrain_generator(frozen_model, gen, data, cfg, seed=seed, amp=amp, log=log)
    train_generator(inv_model, gen, mask, data, cfg, seed=seed, tag=0, amp=amp, log=log)
    # the authors' btidbf.py votes with the model the mask was learned on (there the classifier itself)
    target, votes = _vote(inv_model, gen, data, cfg, seed, amp, log)
    return gen, mask, {"target": target, "votes": votes}


# -- (4) BTI-DBF(U): unlearning ------------------------------------------------------------------------------
def unlearning_loss(logits_mix: torch.Tensor, feats_mix: torch.Tensor, feats_clean: torch.Tensor, y: torch.Tensor,
                    feature_weight: float = 1.0, anchor: str = "trained") -> tuple[torch.Tensor, dict]:
    """CE(f(x_mix), y) + ``feature_weight`` · MSE(f_b(x_mix), f_b(x)).

    ``logits_mix``: N×K; ``feats_mix``/``feats_clean``: N×C×h×w (N×T×D for the ViT); ``y``: the true labels,
    int64 N. ``anchor`` (``cfg.unlearn_anchor``): "trained", the authors' code, keeps the gradient through f_b(x)
    as well; "detached" makes f_b(x) a fixed anchor: the term then only pulls the features of the inverted
    poisoned images G(x) to those of their clean sources, where with the gradient through f_b(x) the clean
    features are pulled just as much toward those of G(x), i.e. toward the backdoor features the step should
    remove.
    """
    if anchor not in ("trained", "detached"):
        raise ValueError(f"anchor must be 'trained' or 'detached', got {anchor!r}")
    clean = feats_clean.detach() if anchor == "detached" else feats_clean
    l_ce = F.cross_entropy(logits_mix.float(), y)
    l_feat = F.mse_loss(feats_mix.float(), clean.float())
    return l_ce + feature_weight * l_feat, {"ce": l_ce.detach(), "feat": l_feat.detach()}


def _unlearn_epochs(model: Classifier, gen: nn.Module, data: Split, cfg: BTIDBFConfig, opt, *, seed: int, tag,
                    amp: bool, log, stages: Stages | None = None) -> dict[str, float]:
    """Fine-tunes ``model`` in place (training mode, as the authors) for ``cfg.unlearn_epochs`` epochs of
    :func:`unlearning_loss` with ``opt``; x_mix: :func:`_mix` of the batch with the frozen G. Stage
    ``round<tag + 1>/unlearn`` of ``stages``."""
    device = _device_of(model)
    mix_gen = generator(seed, "bti-dbf-unlearn-mix", tag, device=device)
    detached = cfg.unlearn_anchor == "detached"

    def step(x, y, mods):
        net = mods["model"]
        xn = net.normalize(x)
        x_mix = _mix(xn, gen, cfg, mix_gen)
        # the clean features f_b(x): same model and (training) mode as the mixed batch, so the unmixed rows match
        # up to BatchNorm's batch statistics; both forward passes update the running statistics, as the authors'.
        # Computed first, as the authors' cln_feat; with a graph only when the loss keeps its gradient.
        with torch.set_grad_enabled(not detached):
            clean = features(net, xn)
        f_mix = features(net, x_mix)
        logits = head(net, f_mix)
        return unlearning_loss(logits, f_mix, clean, y, cfg.unlearn_feature_weight, cfg.unlearn_anchor)

    return _run_epochs(f"unlearning ({tag})", cfg.unlearn_epochs, step, opt, data, cfg, device, seed,
                       ("unlearn", tag), log, "lower the unlearning learning rate", amp=amp,
                       modules={"model": model}, frozen=(gen,), stages=stages, stage=_stage(tag, "unlearn"),
                       parts={"model": model, "optimizer": opt, "mix": RandomStream(mix_gen)}, scratch=("mix",))


def bti_dbf_unlearn(model: Classifier, data: Split, cfg: BTIDBFConfig | None = None, *, device=None, seed: int = 0,
                    amp: bool = True, log: Callable[[str], None] = print, state_path=None,
                    fingerprint: dict | None = None) -> tuple[Classifier, dict]:
    """BTI-DBF(U): returns (a repaired deep copy of ``model``, in eval mode on ``device``; info).

    ``model``: a :class:`Classifier` (images in [0, 1]; any network of :mod:`core.models`); never modified
    (weights, BatchNorm buffers, modes). ``data``: the defender's labelled benign images (uint8 N×C×H×W, int64
    N). ``cfg.rounds`` rounds, each on the current repaired model: a fresh mask (``cfg.mask_epochs``), G trained
    further (``cfg.inversion_epochs``; from the second round on with the target term), then
    ``cfg.unlearn_epochs`` epochs of fine-tuning (:func:`unlearning_loss`, Adam ``cfg.unlearn_lr``). G is
    pre-trained toward the identity once, before the first round's inversion, and the target is voted after
    it. As in the authors' code, one Adam for G and one for the model carry over all rounds. With
    ``state_path`` (a folder) the run is resumable: every phase is a stage of :class:`core.train.Stages`
    (``round1/mask``, ``pretrain``, ``round1/invert``, ``vote``, ``round1/unlearn``, ``round2/mask``, ...)
    saved at each epoch end; a stopped run skips the finished phases and continues the one it was in.

    info: ``{'target': int, 'votes': int64 tensor (num_classes), 'rounds': [last-epoch mean losses per round]}``.
    """
    cfg = cfg or BTIDBFConfig()
    _check_rounds(cfg, "BTI-DBF(U)")
    device = resolve_device(device)
    _split(model)
    data = _on_device(data, device)
    repaired = copy.deepcopy(model).to(device).to(memory_format=memory_format(device))
    repaired.requires_grad_(True)
    opt_model = _adam(repaired.parameters(), cfg.unlearn_lr)
    gen = build_generator(cfg, seed).to(device)
    opt_gen = _adam(gen.parameters(), cfg.generator_lr)
    stages = Stages(state_path, fingerprint)
    target, votes, history = None, None, []
    for r in range(cfg.rounds):
        log(f"BTI-DBF(U) round {r + 1}/{cfg.rounds}")
        frozen_model = _frozen_copy(repaired, device)
        # inv_model: the model of the inversion (the mask's drifted copy with mask_model_mode "train"); the
        # pre-training and the vote read the current model, as the authors' pretrain.py and get_target_label
        mask, inv_model = _decouple(frozen_model, data, cfg, seed=seed, tag=r, amp=amp, log=log, stages=stages)
        if r == 0:
            pretrain_generator(frozen_model, gen, data, cfg, seed=seed, amp=amp, log=log, stages=stages)
        train_generator(inv_model, gen, mask, data, cfg, target=target, optimizer=opt_gen, seed=seed, tag=r,
                        amp=amp, log=log, stages=stages)
        if r == 0:
            target, votes = _vote(frozen_model, gen, data, cfg, seed, amp, log, stages)
        del frozen_model, inv_model
        history.append(_unlearn_epochs(repaired, gen, data, cfg, opt_model, seed=seed, tag=r, amp=amp, log=log,
                                       stages=stages))
    repaired.eval().requires_grad_(False)
    return repaired, {"target": target, "votes": votes, "rounds": history, "generator": gen.eval()}


# -- (5) BTI-DBF(P): purification ----------------------------------------------------------------------------
def purification_loss(logits_p: torch.Tensor, feats_p: torch.Tensor, feats_x: torch.Tensor, p: torch.Tensor,
                      x: torch.Tensor, y: torch.Tensor, cfg: BTIDBFConfig) -> tuple[torch.Tensor, dict]:
    """Loss of the purifier P on one batch (normalized space), p = P(x̃) with x̃ = x_mix + noise:

    CE(f(p), y) + ``cfg.purify_feature_weight`` · MSE(f_b(p), f_b(x)) + w · MSE(p, x), with
    w = ``cfg.purify_pixel_high`` while the pixel MSE is above ``cfg.purify_norm_bound``, else
    ``cfg.purify_pixel_low``. x is the clean batch, also for the rows of x̃ that hold G(x): P has to map
    the inverted poisoned images back to their clean sources. ``feats_x`` is a target (detached).
    """
    l_pred = F.cross_entropy(logits_p.float(), y)
    l_feat = F.mse_loss(feats_p.float(), feats_x.detach().float())
    l_norm = F.mse_loss(p.float(), x.float())
    loss = (l_pred + cfg.purify_feature_weight * l_feat
            + _weighted(l_norm, cfg.purify_norm_bound, cfg.purify_pixel_high, cfg.purify_pixel_low))
    return loss, {"pred": l_pred.detach(), "feat": l_feat.detach(), "norm": l_norm.detach()}


def train_purifier(model: Classifier, purifier_unet: nn.Module, gen: nn.Module, data: Split,
                   cfg: BTIDBFConfig | None = None, *, optimizer: torch.optim.Optimizer | None = None, seed: int = 0,
                   tag=0, amp: bool = True, log: Callable[[str], None] = print,
                   stages: Stages | None = None) -> nn.Module:
    """Trains ``purifier_unet`` P (normalized -> normalized images; in place, moved to ``model``'s device)
    against the frozen ``model`` and the frozen trigger generator ``gen``, ``cfg.purify_epochs`` epochs.

    Per batch: x_mix = x with :func:`mix_count` images replaced by G(x); x̃ = x_mix + ``cfg.purify_noise`` · ε
    (ε ~ N(0, 1)); loss :func:`purification_loss` of P(x̃) against the clean x and the true labels y.
    P is trained without the [0, 1] clamp that :class:`Purifier` applies when deployed (everything stays in
    normalized space, as for G); the pixel term keeps its outputs near valid images, so the clamp changes
    little. ``optimizer``: one to continue with (default: a new Adam, lr ``cfg.purify_lr``). ``stages``: the
    run's resumable state (stage ``round<tag + 1>/purify``, or ``<tag>/purify`` for a named tag). Returns
    ``purifier_unet`` in eval mode.
    """
    _purify_epochs(model, purifier_unet, gen, data, cfg, optimizer=optimizer, seed=seed, tag=tag, amp=amp, log=log,
                   stages=stages)
    return purifier_unet


def _purify_epochs(model, purifier_unet, gen, data, cfg, *, optimizer, seed, tag, amp, log,
                   stages: Stages | None = None) -> dict[str, float]:
    """:func:`train_purifier`'s loop; returns the last epoch's mean losses."""
    cfg = cfg or BTIDBFConfig()
    device = _device_of(model)
    data = _on_device(data, device)
    purifier_unet.to(device).to(memory_format=memory_format(device))
    opt = optimizer or _adam(purifier_unet.parameters(), cfg.purify_lr)
    mix_gen = generator(seed, "bti-dbf-purify-mix", tag, device=device)
    noise_gen = generator(seed, "bti-dbf-purify-noise", tag, device=device)

    def step(x, y, mods):
        xn = model.normalize(x)
        noisy = _mix(xn, gen, cfg, mix_gen)
        noisy = noisy + cfg.purify_noise * torch.randn(xn.shape, generator=noise_gen, device=device,
                                                       dtype=noisy.dtype)
        with torch.no_grad():
            feats_x = features(model, xn)
        p = mods["purifier"](noisy)
        feats_p = features(model, p)
        logits_p = head(model, feats_p)
        return purification_loss(logits_p, feats_p, feats_x, p, xn, y, cfg)

    means = _run_epochs(f"purifier training ({tag})", cfg.purify_epochs, step, opt, data, cfg, device, seed,
                        ("purify", tag), log, "lower the purifier learning rate", amp=amp,
                        modules={"purifier": purifier_unet}, frozen=(model, gen), stages=stages,
                        stage=_stage(tag, "purify"),
                        parts={"purifier": purifier_unet, "optimizer": opt, "mix": RandomStream(mix_gen),
                               "noise": RandomStream(noise_gen)},
                        scratch=("mix", "noise") + (() if optimizer is not None else ("optimizer",)))
    purifier_unet.eval()
    return means


def bti_dbf_purify(model: Classifier, data: Split, cfg: BTIDBFConfig | None = None, *, device=None, seed: int = 0,
                   amp: bool = True, log: Callable[[str], None] = print, state_path=None,
                   fingerprint: dict | None = None) -> tuple[Purifier, dict]:
    """BTI-DBF(P): returns (a :class:`Purifier` in eval mode on ``device``, info). The defended model is
    ``model(purifier(x))`` with the original ``model``, which is not modified.

    As the authors' ``btidbfp.py``: G is pre-trained toward the identity and P starts as a copy of it; then
    ``cfg.rounds`` rounds of: a fresh mask; G trained further (from the second round on through the current
    P, x̂ = P(G(x)), and with the target term); P trained by :func:`train_purifier`. The target is voted after
    the first round's inversion (with G alone). One Adam for G and one for P carry over all rounds. With
    ``state_path`` (a folder) the run is resumable by stage, as :func:`bti_dbf_unlearn` (stages
    ``round1/mask``, ``pretrain``, ``purifier-init``, ``round1/invert``, ``vote``, ``round1/purify``, ...).

    info: ``{'target': int, 'votes': int64 tensor (num_classes), 'rounds': [last-epoch mean losses of P]}``.
    """
    cfg = cfg or BTIDBFConfig()
    _check_rounds(cfg, "BTI-DBF(P)")
    device = resolve_device(device)
    frozen_model = _frozen_copy(model, device)
    data = _on_device(data, device)
    gen = build_generator(cfg, seed).to(device)
    opt_gen = _adam(gen.parameters(), cfg.generator_lr)
    unet = build_generator(cfg, seed).to(device)  # P: overwritten by a copy of the pre-trained G in round 1
    opt_unet = _adam(unet.parameters(), cfg.purify_lr)
    stages = Stages(state_path, fingerprint)

    def start_purifier_from_generator():
        unet.load_state_dict(gen.state_dict())

    target, votes, history = None, None, []
    for r in range(cfg.rounds):
        log(f"BTI-DBF(P) round {r + 1}/{cfg.rounds}")
        # inv_model: as in bti_dbf_unlearn; P is trained against the given model (frozen), as the authors'
        mask, inv_model = _decouple(frozen_model, data, cfg, seed=seed, tag=r, amp=amp, log=log, stages=stages)
        if r == 0:
            pretrain_generator(frozen_model, gen, data, cfg, seed=seed, amp=amp, log=log, stages=stages)
            stages.once("purifier-init", start_purifier_from_generator, parts={"purifier": unet})
        train_generator(inv_model, gen, mask, data, cfg, target=target, through=unet if r > 0 else None,
                        optimizer=opt_gen, seed=seed, tag=r, amp=amp, log=log, stages=stages)
        del inv_model
        if r == 0:
            target, votes = _vote(frozen_model, gen, data, cfg, seed, amp, log, stages)
        history.append(_purify_epochs(frozen_model, unet, gen, data, cfg, optimizer=opt_unet, seed=seed, tag=r,
                                      amp=amp, log=log, stages=stages))
    unet.eval().requires_grad_(False)
    purifier = Purifier(unet, model.spec.get("mean"), model.spec.get("std"), cfg.purify_noise).to(device).eval()
    return purifier, {"target": target, "votes": votes, "rounds": history, "generator": gen.eval()}


__all__ = ["BTIDBFConfig", "GeneratorUNet", "Purifier", "bti_dbf_purify", "bti_dbf_unlearn", "build_generator",
           "decouple_mask", "decoupling_loss", "detect_target", "feature_shape", "features", "head",
           "inversion_loss", "invert_trigger", "mask_from_logits", "mix_count", "pretrain_generator", "pretrain_loss",
           "purification_loss", "train_generator", "train_purifier", "unlearning_loss"]


# -- behind the common defense interface (defend.py --defense BTI-DBF-U / BTI-DBF-P) ----------------------------
# every BTIDBFConfig field is a setting (flag --<name with dashes>), but the augmentation, which is always on
BTI_DBF_SETTINGS = from_dataclass(BTIDBFConfig, exclude=("augment", "crop_padding"), label="BTI-DBF: ")


def _resumable(ctx: FitContext) -> dict:
    return {"state_path": ctx.state_path("bti-dbf"), "fingerprint": ctx.fingerprint}


class _BTIDBFDefense(Defense):
    # 2: the authors' mask_model_mode "train" and, for (U), unlearn_anchor "trained" by default (1: "eval" and
    # "detached", still the settings' alternatives)
    version = 2
    labelled = True
    detects_target = True
    settings = {**BTI_DBF_SETTINGS, "data_fraction": defender_share(0.05)}

    def config(self) -> BTIDBFConfig:
        return BTIDBFConfig(**{key: self.values[key] for key in BTI_DBF_SETTINGS})

    def _record(self, info: dict, model: Classifier) -> None:
        self.detection = {"target": info["target"], "votes": info["votes"].tolist()}
        # G as an image transform, for the preview grid (inverted poisoned images G(x), as the paper's Figure 3)
        self.inverted = Purifier(info["generator"], model.spec.get("mean"), model.spec.get("std")).cpu()

    def preview_rows(self, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return {"inverted G(x)": self.inverted(clean)}


@register_defense
class BTIDBFUnlearn(_BTIDBFDefense):
    name = "BTI-DBF-U"
    aliases = ("BTI-DBF(U)",)
    order = 20
    summary = "BTI-DBF(U): invert the trigger with decoupled benign features, then unlearn it (repairs a copy)"

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        repaired, info = bti_dbf_unlearn(model, data, self.config(), device=ctx.device, seed=ctx.seed, amp=ctx.amp,
                                         log=ctx.log, **_resumable(ctx))
        self._record(info, model)
        return DeployedModel(repaired)


@register_defense
class BTIDBFPurify(_BTIDBFDefense):
    name = "BTI-DBF-P"
    aliases = ("BTI-DBF(P)",)
    order = 10
    summary = "BTI-DBF(P): invert the trigger with decoupled benign features, then train an input purifier"

    def fit(self, model: Classifier, data: Split, ctx: FitContext) -> DeployedModel:
        purifier, info = bti_dbf_purify(model, data, self.config(), device=ctx.device, seed=ctx.seed, amp=ctx.amp,
                                        log=ctx.log, **_resumable(ctx))
        self._record(info, model)
        return DeployedModel(_frozen_copy(model, resolve_device(ctx.device)), purifier)
