"""Label-Consistent (Turner et al., 2019): a clean-label attack. Only target-class training images are
poisoned and they keep their (correct) label, so a label audit finds nothing.

A share ``poisoned_rate`` of the *target class* (default 25 %: 1,250 images on CIFAR-10) is first made hard
to learn from its content - PGD against a clean model (L∞, ε = 8/255, step 1.5/255, 100 steps, no random
start) - and then gets the BadNets trigger, so the network leans on the trigger to fit those images.

The clean model is passed as ``clean_model`` (attack.py uses the Benign run of the same data set and
architecture). PGD results are cached in ``cache_dir``, keyed by everything they depend on (the images, the
model's weights, ε, step, steps, the PGD input and the quantization), and reused by later runs.

Three switches choose between the authors' code (REFINE's attack.py with BackdoorBox's LabelConsistent and its
torchattacks PGD: the defaults) and this toolkit's version 1 behaviour:

* ``lc_pgd_input``: ``unnormalized`` feeds PGD's [0, 1] images straight to the clean model's network, without
  the normalization the model was trained behind (the authors' adversarial transform is ToTensor alone and their
  models have no normalization layer); ``normalized`` attacks the whole classifier, normalization included;
* ``lc_quantize``: ``floor`` truncates the adversarial images to uint8 (torchattacks' ``(x*255).type(uint8)``);
  ``round`` rounds them, as every other image here is;
* ``lc_init``: ``benign`` starts the LC model from the clean model's weights (the authors pass one object as both
  ``model`` and ``adv_model``) and then trains the full recipe; ``fresh`` starts from a seeded initialization.
  attack.py reads it through :attr:`LabelConsistent.starts_from_reference`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import atomic_save, safe_load
from ..checks import choice, existing_file, integer, number
from ..data import to_float
from ..errors import UserError
from ..models import Classifier
from ..settings import Setting
from ..train import frozen
from .badnets import BadNets
from .base import register_attack


PGD_INPUTS = ("unnormalized", "normalized")
QUANTIZATIONS = ("floor", "round")
INITS = ("benign", "fresh")


def pgd_network(model, pgd_input: str):
    """The module PGD differentiates: for ``unnormalized`` (the authors' code) a :class:`Classifier`'s network
    without its normalization, so the [0, 1] images reach it as they are; else (or for a bare module, which has
    no normalization of its own) ``model`` itself."""
    if pgd_input not in PGD_INPUTS:
        raise ValueError(f"pgd_input must be one of {PGD_INPUTS}, got {pgd_input!r}")
    return model.net if pgd_input == "unnormalized" and isinstance(model, Classifier) else model


def to_uint8(x: torch.Tensor, quantize: str) -> torch.Tensor:
    """Float images in [0, 1] on the 8-bit grid: ``floor`` truncates (the authors' torchattacks
    ``(x*255).type(torch.uint8)``), ``round`` rounds to the nearest level."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    scaled = x * 255
    scaled = scaled.floor() if quantize == "floor" else scaled.round()
    return scaled.clamp(0, 255).to(torch.uint8)


def pgd_hard_to_learn(model, images: torch.Tensor, labels: torch.Tensor, eps: float, step: float, steps: int,
                      device="cpu", batch_size: int = 256, progress: bool = True,
                      quantize: str = "round") -> torch.Tensor:
    """Untargeted L∞ PGD that maximises ``model``'s loss on the true labels, without random start.

    ``images``: uint8 N×C×H×W; ``eps``/``step`` in [0, 1] pixel units; ``model`` gets the [0, 1] images as they
    are (see :func:`pgd_network`). Returns uint8 images (see :func:`to_uint8`): rounding stays within ``eps`` of
    the input (the ball's bounds are grid points for eps·255 whole); ``floor`` may end one level lower.
    """
    out = torch.empty_like(images)
    with frozen(model):  # eval mode, no weight gradients; both restored afterwards
        bar = tqdm(range(0, len(images), batch_size), desc="LC: PGD", leave=False, disable=not progress or None)
        for s in bar:
            x = to_float(images[s:s + batch_size].to(device))
            y = labels[s:s + batch_size].to(device)
            adv = x.clone()
            for _ in range(steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), y)
                grad, = torch.autograd.grad(loss, adv)
                with torch.no_grad():
                    adv = adv + step * grad.sign()
                    adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
            out[s:s + batch_size] = to_uint8(adv.detach(), quantize).cpu()
    return out


@register_attack
class LabelConsistent(BadNets):
    order = 6
    name = "LC"
    version = 2  # 2: the authors' PGD input, floor quantization and initial weights by default (lc_* switches)
    aliases = ("LabelConsistent",)
    default_poisoned_rate = 0.25
    takes_trigger_file = True
    reference_attack, reference_setting = "Benign", "benign_model"  # PGD runs against a clean model
    settings = {
        "lc_eps": Setting(8.0, "LC: PGD budget ε in 1/255 units", number(0, 255)),
        "lc_step": Setting(1.5, "LC: PGD step in 1/255 units", number(0, 255, lo_open=True)),
        "lc_steps": Setting(100, "LC: PGD steps", integer(0)),
        "lc_pgd_input": Setting("unnormalized", "LC: what PGD feeds the clean model: unnormalized (the authors' "
                                                "code: [0, 1] images straight into its network, bypassing the "
                                                "normalization it was trained behind) or normalized (this toolkit's "
                                                "LC version 1: through the whole classifier)", choice(PGD_INPUTS)),
        "lc_quantize": Setting("floor", "LC: how the adversarial images go to uint8: floor (the authors' code: "
                                        "torchattacks truncates) or round (this toolkit's LC version 1)",
                               choice(QUANTIZATIONS)),
        "lc_init": Setting("benign", "LC: the LC model's initial weights: benign (the authors' code: the clean model's "
                                     "weights, then the full training recipe) or fresh (this toolkit's LC version 1: "
                                     "a seeded initialization)", choice(INITS)),
        "benign_model": Setting(None, "LC: the clean model PGD attacks (default: the latest Benign run of the same "
                                      "data set and model under --out)", existing_file()),
    }

    @property
    def starts_from_reference(self) -> bool:
        return self.lc_init == "benign"

    def __init__(self, *args, clean_model=None, cache_dir=None, device="cpu", **kwargs):
        super().__init__(*args, **kwargs)
        self.clean_model, self.cache_dir, self.device = clean_model, cache_dir, device

    def use_reference(self, model, cache_dir, device) -> None:
        self.clean_model, self.cache_dir, self.device = model, cache_dir, device

    def candidate_indices(self, labels):
        return (labels == self.y_target).nonzero().flatten()

    def payload_count(self, labels):
        """``poisoned_rate`` is a share of the target class here, not of the whole training set."""
        return int(round(self.poisoned_rate * int((labels == self.y_target).sum())))

    def prepare_poisoned(self, images, labels, indices):
        if self.clean_model is None:
            raise UserError("LC needs a clean model to make its poisoned images hard to learn: pass clean_model "
                            "(attack.py uses the Benign run of the same data set and model)")
        eps, step = self.lc_eps / 255, self.lc_step / 255
        key = self._cache_key(images, labels)
        cache = Path(self.cache_dir) / f"pgd_{key[:20]}.pth" if self.cache_dir else None
        if cache is not None and cache.is_file():

            blob = safe_load(cache)
            if blob.get("key") == key and blob["images"].shape == images.shape:
                return blob["images"]
        adv = pgd_hard_to_learn(pgd_network(self.clean_model, self.lc_pgd_input), images, labels, eps, step,
                                self.lc_steps, self.device, quantize=self.lc_quantize)
        if cache is not None:

            atomic_save({"key": key, "images": adv, "eps": self.lc_eps, "step": self.lc_step,
                         "steps": self.lc_steps, "pgd_input": self.lc_pgd_input, "quantize": self.lc_quantize}, cache)
        return adv

    def _cache_key(self, images, labels) -> str:
        h = hashlib.sha256()
        h.update(f"eps={self.lc_eps};step={self.lc_step};steps={self.lc_steps};input={self.lc_pgd_input};"
                 f"quantize={self.lc_quantize}".encode())
        for t in (images, labels, *self.clean_model.state_dict().values()):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
