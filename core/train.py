"""Training machinery shared by the attacks (classifiers) and the defenses (input transforms):
optimizer and learning-rate schedule from names, a resumable epoch state, and the classifier loop."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .augment import AUGMENTATIONS
from .checkpoint import atomic_save, safe_load
from .data import Split, iterate_batches, memory_format
from .errors import DivergedError, UserError
from .seeding import generator


def resolve_device(name: str | None = None) -> torch.device:
    """'auto'/None -> cuda if available else cpu; 'cuda:1', 'cpu' or a bare GPU index ('0') otherwise."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = f"cuda:{name}" if str(name).isdigit() else str(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                   fused: bool = False):
    """SGD or Adam by name. ``fused``: one fused kernel per step on CUDA (ignored elsewhere)."""
    params = list(params)
    extra = {"fused": True} if fused and params and params[0].is_cuda else {}
    if name.lower() == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **extra)
    if name.lower() == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)
    raise UserError(f"unknown optimizer {name!r}; choose SGD or Adam")


def lr_factor(schedule: str, progress: float, epochs: int, milestones=(), gamma=0.1, warmup: float = 0.15) -> float:
    """Learning-rate multiplier at ``progress`` epochs (a float: epoch + fraction of the epoch done).

    multistep: ``gamma ** (number of milestones passed)`` (the paper's schedules); cosine: half cosine
    to 0; onecycle: linear warm-up over ``warmup`` of the run, then linear decay to 0; constant: 1.
    """
    if schedule == "multistep":
        return gamma ** sum(progress >= m for m in milestones)
    t = min(progress / max(epochs, 1e-9), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":
        return t / warmup if t < warmup else max(1 - t, 0.0) / (1 - warmup)
    if schedule == "constant":
        return 1.0
    raise UserError(f"unknown schedule {schedule!r}; choose multistep, cosine, onecycle or constant")


def set_lr(optimizer, base_lr: float, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor


class EpochState:
    """Resumable training state in one file, rewritten atomically at the end of every epoch.

    ``fingerprint`` is the resolved config that must match for a resume: starting the same command
    again continues; starting a different one in the same folder is refused instead of mixing runs.
    """

    def __init__(self, path, modules: dict[str, nn.Module], optimizer, fingerprint: dict):
        self.path, self.modules, self.optimizer, self.fingerprint = Path(path), modules, optimizer, fingerprint

    @staticmethod
    def read(path, fingerprint: dict) -> dict | None:
        """The saved state at ``path`` (None if there is none), refused unless it was saved with ``fingerprint``.

        Loading it is a check in itself: a truncated or corrupt file is named here, before a run writes anything.
        """
        path = Path(path)
        if not path.is_file():
            return None
        blob = safe_load(path)
        saved = blob.get("fingerprint") if isinstance(blob, dict) else None
        if saved != fingerprint:
            saved = saved if isinstance(saved, dict) else {}
            changed = sorted(k for k in set(fingerprint) | set(saved) if fingerprint.get(k) != saved.get(k))
            raise UserError(f"{path.parent} holds an unfinished run with other settings ({', '.join(changed)}); "
                            f"use the same settings to resume, another --out, or --fresh to start over")
        return blob

    def load(self) -> int:
        """Restores the saved state if any; returns the number of epochs already done (0 for a new run)."""
        blob = self.read(self.path, self.fingerprint)
        if blob is None:
            return 0
        for name, module in self.modules.items():
            module.load_state_dict(blob["modules"][name])
        self.optimizer.load_state_dict(blob["optimizer"])
        return int(blob["epoch"])

    def save(self, epoch: int) -> None:
        atomic_save({"epoch": epoch, "fingerprint": self.fingerprint, "optimizer": self.optimizer.state_dict(),
                     "modules": {n: m.state_dict() for n, m in self.modules.items()}}, self.path)


class LossGuard:
    """Stops a training loop whose loss stops being finite (nan or inf): a diverged run is not a result.

    ``update(loss, step)`` records on the loss's own device the first step of the epoch whose loss is not
    finite, so the loop needs no host synchronisation per step; every ``every`` steps, and when the loop
    calls :meth:`check` at the end of the epoch (before it evaluates or saves anything), one ``.item()``
    looks at the record and raises :class:`DivergedError` naming the epoch and the step. The loop's last
    saved state is then the one of the last good epoch. Shared by every training loop of the toolkit.
    """

    NONE = -1

    def __init__(self, every: int = 20, hint: str = "lower the learning rate (--lr)"):
        self.every, self.hint = every, hint
        self.epoch, self.first, self.value = 0, None, None

    def start_epoch(self, epoch: int, device) -> None:
        """``epoch``: 0-based index of the epoch that starts."""
        self.epoch = epoch
        self.first = torch.full((), self.NONE, dtype=torch.int64, device=device)
        self.value = torch.zeros((), device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """``step``: 0-based index of the step within the epoch."""
        loss = loss.detach().float()
        new = ~torch.isfinite(loss) & (self.first == self.NONE)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.value = torch.where(new, loss, self.value)
        if (step + 1) % self.every == 0:
            self.check()

    def check(self) -> None:
        if self.first is None:
            return
        step = int(self.first.item())
        if step != self.NONE:
            raise DivergedError(f"loss became {float(self.value.item())} at epoch {self.epoch + 1}, step {step + 1}: "
                                f"training diverged; {self.hint}")


def is_compile_failure(err: BaseException) -> bool:
    """True for an error of torch.compile's tracer or code generator (classes of ``torch._dynamo`` and
    ``torch._inductor``, e.g. no C++ compiler on the machine), after which eager mode can go on. Out of
    memory and errors of the model itself are not: hiding them would hide a real problem."""
    if isinstance(err, torch.OutOfMemoryError):
        return False
    return type(err).__module__.startswith(("torch._dynamo", "torch._inductor"))


def try_compiled(step: Callable, compiled, eager, log: Callable[[str], None]):
    """``step(compiled)`` - forward and backward, as a compiled backward graph is built at the first backward -
    or, when compilation fails, one warning and ``step(eager)``. Returns ``(result, modules to use from now
    on)``; any other error is raised as it is. Shared by every training loop with a ``compile`` option."""
    try:
        return step(compiled), compiled
    except Exception as err:  # noqa: BLE001 - re-raised below unless the compiler failed
        if not is_compile_failure(err):
            raise
        log(f"warning: torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            f"training continues without it")
        return step(eager), eager


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (keeps accuracy without a grad scaler); nothing on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_classifier(
    model: nn.Module,
    train: Split,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.1,
    optimizer: str = "SGD",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "multistep",
    milestones=(100, 130),
    gamma: float = 0.1,
    label_smoothing: float = 0.0,
    augment: str = "crop_flip",
    device="cpu",
    amp: bool = True,
    seed: int = 0,
    state_path=None,
    fingerprint: dict | None = None,
    evaluate: Callable[[int], dict] | None = None,
    eval_every: int = 10,
    log: Callable[[str], None] = print,
    roles: torch.Tensor | None = None,
    batch_hook: Callable | None = None,
    compile: bool = False,
    fused: bool = False,
) -> nn.Module:
    """Trains ``model`` (images in [0, 1] -> logits) with cross-entropy on ``train``.

    The training images go to ``device`` once, as uint8; batches are augmented there. With
    ``state_path`` the run is resumable: the epoch state is saved after every epoch and reloaded on start.
    ``evaluate(epoch)`` is called every ``eval_every`` epochs and after the last one. A non-finite loss
    raises :class:`DivergedError` (see :class:`LossGuard`); the state of the last good epoch stays saved.
    ``batch_hook(x, roles, generator)``: an attack's per-batch transformation (see
    :meth:`core.attacks.Attack.train_hook`), applied before ``augment``; ``roles``: uint8 N, each sample's role.
    ``compile``: full batches run through ``torch.compile(model)`` (eager again where compilation fails);
    ``fused``: fused optimizer kernels on CUDA. Both are speed-ups only: the same computation.
    """
    device = torch.device(device)
    layout = memory_format(device)
    model.to(device).to(memory_format=layout)
    opt = make_optimizer(model.parameters(), optimizer, lr, momentum, weight_decay, fused=fused)
    state = EpochState(state_path, {"model": model}, opt, fingerprint or {}) if state_path else None
    start = state.load() if state else 0
    if start:
        log(f"resuming from the end of epoch {start}/{epochs} ({state_path})")
    images, labels = train.images.to(device), train.labels.to(device)
    if batch_hook is not None and roles is None:
        raise ValueError("batch_hook needs the roles of the training samples")
    roles = roles.to(device) if batch_hook is not None else None
    steps = math.ceil(len(labels) / batch_size)
    augment_fn = AUGMENTATIONS[augment]
    guard = LossGuard()
    fast = torch.compile(model) if compile else model

    def step_with(net, x, y):
        with autocast(device, amp):
            logits = net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return logits, loss

    for epoch in range(start, epochs):
        model.train()
        guard.start_epoch(epoch, device)
        shuffle = generator(seed, "shuffle", epoch)  # per-epoch streams make a resumed run exact
        aug_gen = generator(seed, "augment", epoch, device=device)
        hook_gen = generator(seed, "attack-hook", epoch, device=device)
        seen, loss_sum, correct, t0 = 0, torch.zeros((), device=device), torch.zeros((), device=device), time.time()
        bar = tqdm(iterate_batches(images, labels, batch_size, device, shuffle=True, generator=shuffle, extra=roles),
                   total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True, disable=None)
        for step, (x, y, *batch_roles) in enumerate(bar):
            set_lr(opt, lr, lr_factor(schedule, epoch + step / steps, epochs, milestones, gamma))
            if batch_hook is not None:
                x = batch_hook(x, batch_roles[0], generator=hook_gen)
            x = augment_fn(x, generator=aug_gen).contiguous(memory_format=layout)
            # the last, smaller batch runs eagerly: a second compilation for its shape would cost more
            if fast is not model and len(x) == batch_size:
                (logits, loss), fast = try_compiled(lambda net: step_with(net, x, y), fast, model, log)
            else:
                logits, loss = step_with(model, x, y)
            opt.step()
            guard.update(loss, step)
            seen += len(y)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            if step % 20 == 0 and not bar.disable:  # .item() waits for the GPU: only for a visible bar
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{opt.param_groups[0]['lr']:.4f}",
                                img_s=f"{seen / (time.time() - t0):.0f}")
        guard.check()  # a diverged epoch is neither logged as done, evaluated nor saved
        log(f"epoch {epoch + 1}/{epochs}: loss {loss_sum.item() / seen:.4f}, train acc {100 * correct.item() / seen:.2f}%, "
            f"{seen / (time.time() - t0):.0f} img/s, lr {opt.param_groups[0]['lr']:.5f}")
        # evaluate before saving: an interruption in between repeats the epoch rather than skipping its evaluation
        if evaluate and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            evaluate(epoch + 1)
        if state:
            state.save(epoch + 1)
    return model
