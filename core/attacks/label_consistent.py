"""Label-Consistent (Turner et al., 2019): a clean-label attack. Only target-class training images are
poisoned and they keep their (correct) label, so a label audit finds nothing.

A share ``poisoned_rate`` of the *target class* (default 25 %: 1,250 images on CIFAR-10) is first made hard
to learn from its content - PGD against a clean model (L∞, ε = 8/255, step 1.5/255, 100 steps, no random
start) - and then gets the BadNets trigger, so the network leans on the trigger to fit those images.

The clean model is passed as ``clean_model`` (attack.py uses the Benign run of the same data set and
architecture). PGD results are cached in ``cache_dir``, keyed by everything they depend on (the images, the
model's weights, ε, step and steps), and reused by later runs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import atomic_save, safe_load
from ..checks import existing_file, integer, number
from ..data import to_float
from ..errors import UserError
from ..settings import Setting
from ..train import frozen
from .badnets import BadNets
from .base import register_attack


def pgd_hard_to_learn(model, images: torch.Tensor, labels: torch.Tensor, eps: float, step: float, steps: int,
                      device="cpu", batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Untargeted L∞ PGD that maximises ``model``'s loss on the true labels, without random start.

    ``images``: uint8 N×C×H×W; ``eps``/``step`` in [0, 1] pixel units. Returns uint8 images within ``eps`` of
    the input (rounding to the 8-bit grid stays inside the ball, whose bounds are grid points for eps·255 whole).
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
            out[s:s + batch_size] = (adv.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    return out


@register_attack
class LabelConsistent(BadNets):
    order = 6
    name = "LC"
    aliases = ("LabelConsistent",)
    default_poisoned_rate = 0.25
    takes_trigger_file = True
    reference_attack, reference_setting = "Benign", "benign_model"  # PGD runs against a clean model
    settings = {
        "lc_eps": Setting(8.0, "LC: PGD budget ε in 1/255 units", number(0, 255)),
        "lc_step": Setting(1.5, "LC: PGD step in 1/255 units", number(0, 255, lo_open=True)),
        "lc_steps": Setting(100, "LC: PGD steps", integer(0)),
        "benign_model": Setting(None, "LC: the clean model PGD attacks (default: the latest Benign run of the same "
                                      "data set and model under --out)", existing_file()),
    }

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
        adv = pgd_hard_to_learn(self.clean_model, images, labels, eps, step, self.lc_steps, self.device)
        if cache is not None:

            atomic_save({"key": key, "images": adv, "eps": self.lc_eps, "step": self.lc_step,
                         "steps": self.lc_steps}, cache)
        return adv

    def _cache_key(self, images, labels) -> str:
        h = hashlib.sha256()
        h.update(f"eps={self.lc_eps};step={self.lc_step};steps={self.lc_steps}".encode())
        for t in (images, labels, *self.clean_model.state_dict().values()):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
