"""The adaptive attack of the paper's Section 5.4 (Eq. 10, Table 4): an attacker who knows REFINE fine-tunes the
backdoored model F so that REFINE's own loss is already low when the defender arrives::

    min_F  L_b(F) + γ · L_refine(F, T_a, M_a)

* ``L_b``: cross-entropy on the attacker's poisoned training set - the attack's own batches, with its per-batch hook
  and training augmentation, as the normal attack trained on;
* ``L_refine``: REFINE's loss (:meth:`core.defenses.refine.REFINE.losses`, with the paper's method settings)
  through the attacker's own UNet T_a and label derangement M_a, on the same batches, with pseudo-labels
  argmax F(x). T_a is trained jointly with F (one SGD optimizer): a simulated defense that F learns to please.

M_a is drawn from another random stream than the defender's mapping (``derive_seed(seed, "adaptive-attacker")``),
so the defender's REFINE run later meets a mapping the attacker never saw - the paper's explanation of why the
attack fails.

``attack.py --attack BadNets --adaptive-gamma 1.0`` runs the normal attack first when it has no finished run of
the same settings (its own folder, reused by everything else), then fine-tunes a copy of its model. The adaptive
model goes to ``attack/<DATASET>/<MODEL>/<ATTACK>-adaptive/``, so the normal attack's ``latest`` pointers never
name it; the defender runs ``refine.py --attack BadNets-adaptive``.

The paper gives neither γ nor the fine-tuning schedule. Ours (docs/fidelity.md): γ = 1, 20 epochs of SGD at a
constant 0.01 with the classifier recipe's momentum, weight decay, batch size and augmentation. F trains in
training mode on x (L_b) and runs in evaluation mode in the simulated REFINE's pass F(T_a(x)), as the defender's
REFINE runs the frozen model, so F's BatchNorm running statistics come from x alone (``--adaptive-bn eval``).
``--adaptive-bn joint`` (the toolkit's first version) trains F in training mode in both passes: its running
statistics then mix x and T_a(x), which cost the mini BadNets model about 20 of the 22 BA points it lost
(docs/results.md, Table 4: recomputing them on clean images took it from 59.54 back to 79.46, ASR still 100 %;
with ``eval`` the fine-tuning ends at 78.28 / 99.99 and lowers the attacker's L_refine as much).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import choice, integer, learning_rate, number
from .data import Split, memory_format
from .errors import UserError
from .models import UNet
from .seeding import derive_seed
from .settings import Setting, flag_of
from .train import EpochState, classifier_batches, fit, make_optimizer, modes_kept

BN_MODES = ("eval", "joint")  # F's mode in the simulated REFINE's pass (--adaptive-bn)

ADAPTIVE = {
    "adaptive_gamma": Setting(None, "the adaptive attack (the paper's Section 5.4): after the normal attack, fine-tune "
                                    "its model on L_b + γ·L_refine through the attacker's own UNet and derangement; "
                                    "γ > 0 (default: off). The model goes to <ATTACK>-adaptive/: defend it with "
                                    "refine.py --attack <ATTACK>-adaptive",
                              number(0, lo_open=True, optional=True), "method"),
    "adaptive_epochs": Setting(20, "adaptive attack: fine-tuning epochs (with --adaptive-gamma)", integer(1), "train"),
    "adaptive_lr": Setting(0.01, "adaptive attack: constant SGD learning rate of F and of the attacker's UNet (with "
                                 "--adaptive-gamma; momentum and weight decay: the recipe's)", learning_rate(),
                           "train"),
    "adaptive_bn": Setting("eval", "adaptive attack: F's mode in the simulated REFINE's pass F(T_a(x)) (with "
                                   "--adaptive-gamma): 'eval' runs it in evaluation mode, as the defender's REFINE "
                                   "runs the frozen model (running statistics from x alone); 'joint' trains it in "
                                   "training mode, so its BatchNorm running statistics gather x and T_a(x) alike",
                           choice(BN_MODES), "method"),
    "adaptive_unet_channels": Setting(64, "adaptive attack: first-layer width of the attacker's UNet (with "
                                          "--adaptive-gamma)", integer(1, 512), "method"),
}
SUFFIX = "-adaptive"  # the adaptive model's attack folder: <ATTACK>-adaptive


class AdaptiveAttack:
    """What the run's settings record of the fine-tuning code (:func:`core.runlog.method_versions`): bump
    ``version`` whenever what :func:`adaptive_finetune` computes changes."""

    name = "adaptive-attack"
    version = 1


def code_run() -> tuple:
    """The methods whose code an adaptive run executes besides its attack's, for the run's settings
    (:func:`core.runlog.method_versions`): the fine-tuning and the REFINE it simulates."""
    from .defenses.refine import RefineDefense  # noqa: PLC0415 - the defenses import the attacks: a late import
    return AdaptiveAttack, RefineDefense


def is_adaptive(config: dict) -> bool:
    return config.get("adaptive_gamma") is not None


def without_adaptive(config: dict) -> dict:
    """The normal attack's configuration: the adaptive settings left out (they mean nothing without γ, and leaving
    them out keeps the settings - and so the run folders - of the normal attack as they were before they existed)."""
    return {k: v for k, v in config.items() if k not in ADAPTIVE}


def split_name(attack: str) -> tuple[str, bool]:
    """``'BadNets-adaptive'`` -> ``('BadNets', True)`` (the adaptive variant's name in compare.py's rows and
    refine.py's ``--attack``); any other name -> ``(name, False)``."""
    if attack.endswith(SUFFIX) and len(attack) > len(SUFFIX):
        return attack[:-len(SUFFIX)], True
    return attack, False


def refuse_stray_flags(given: dict) -> None:
    """An adaptive setting typed without ``--adaptive-gamma`` would be silently ignored: refused in one line."""
    if given.get("adaptive_gamma") is None:
        stray = [k for k in ADAPTIVE if k != "adaptive_gamma" and given.get(k) is not None]
        if stray:
            raise UserError(f"{flag_of(stray[0])} sets the adaptive attack's fine-tuning; add --adaptive-gamma G "
                            f"(e.g. 1.0) to run it")


def attacker_seed(seed: int) -> int:
    """The seed of the attacker's REFINE (its UNet's start and its derangement M_a): another stream than the
    defender's ``label-mapping`` of the same user seed."""
    return derive_seed(seed, "adaptive-attacker")


@contextlib.contextmanager
def evaluation_mode(module: nn.Module, active: bool = True):
    """``module`` in evaluation mode inside the block (when ``active``), its own modes restored after."""
    with modes_kept(module):
        if active:
            module.eval()
        yield


def adaptive_finetune(model: nn.Module, train: Split, *, gamma: float, epochs: int, lr: float, unet_channels: int,
                      batch_size: int, momentum: float, weight_decay: float, augment: str, device, amp: bool,
                      seed: int, bn: str = "eval", roles: torch.Tensor | None = None, batch_hook: Callable | None = None,
                      hook_after_augment: bool = False, state_path=None, fingerprint: dict | None = None,
                      evaluate: Callable[[int], dict] | None = None, on_epoch_end=None, log=print) -> dict:
    """Fine-tunes ``model`` (a :class:`core.models.Classifier`, images in [0, 1] -> logits, trained in place) on the
    poisoned ``train`` split by ``L_b + gamma · L_refine`` (module docstring) through :func:`core.train.fit`.

    ``bn``: 'eval' runs the T_a(x) pass in evaluation mode (running statistics, left unchanged by it), as the
    defender's REFINE runs F; 'joint' runs F in training mode in both passes (x and T_a(x)) (module docstring).

    ``roles``/``batch_hook``/``hook_after_augment``: the attack's per-batch hook, as for
    :func:`core.train.train_classifier`. Resumable through ``state_path`` (F, T_a and the optimizer);
    ``evaluate(epoch)`` after every epoch; ``on_epoch_end(epoch, means)`` gets the epoch's mean ``loss``,
    ``L_b``, ``L_refine`` and ``agree`` (share of the batch where M_a∘F∘T_a agrees with the pseudo-label).
    Returns the last epoch's means."""
    from .defenses.refine import REFINE  # noqa: PLC0415 - the defenses import the attacks: a late import

    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    device = torch.device(device)
    layout = memory_format(device)
    model.to(device).to(memory_format=layout)
    num_classes = model.spec["num_classes"]
    torch.manual_seed(attacker_seed(seed))  # T_a's initial weights
    simulated = REFINE(UNet(unet_channels), model, num_classes, seed=attacker_seed(seed), device=device, amp=amp)
    unet = simulated.unet
    opt = make_optimizer([*model.parameters(), *unet.parameters()], "SGD", lr, momentum, weight_decay)
    prepare = classifier_batches(augment, layout, batch_hook, hook_after_augment)

    def loss_fn(x, y, mods):
        logits = mods["model"](x)
        backdoor = F.cross_entropy(logits.float(), y)
        # REFINE's pseudo-labels argmax F(x), here from the forward pass L_b already made (F trains, so they move)
        with evaluation_mode(mods["model"], bn == "eval"):
            refine_loss, parts = simulated.losses(x, logits.detach().argmax(1), unet=mods["unet"], model=mods["model"])
        return backdoor + gamma * refine_loss, {"L_b": backdoor.detach(), "L_refine": refine_loss.detach(),
                                                "agree": parts["agree"]}

    modules = {"model": model, "unet": unet}
    if batch_hook is not None and roles is None:
        raise ValueError("batch_hook needs the roles of the training samples")
    return fit(loss_fn, modules, train.images, train.labels, optimizer=opt, epochs=epochs, batch_size=batch_size,
               device=device, seed=seed, streams="adaptive-", trainable=("model", "unet"), prepare=prepare,
               extra=roles if batch_hook is not None else None, amp=amp,
               state=EpochState(state_path, modules, opt, fingerprint or {}) if state_path else None,
               evaluate=evaluate, eval_every=1, on_epoch_end=on_epoch_end, log=log, desc="adaptive epoch",
               hint="lower --adaptive-lr or --adaptive-gamma")
