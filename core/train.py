"""Training machinery shared by the attacks (classifiers) and the defenses (input transforms):
optimizer and learning-rate schedule from names, the resumable state of a run (:class:`EpochState`, and
:class:`Stages` for runs made of several phases), frozen modules (:func:`frozen`), the one training loop
(:func:`fit`) and the classifier's training on top of it."""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed
from .augment import AUGMENTATIONS
from .checkpoint import atomic_save, safe_load
from .checks import choice, int_list, integer, learning_rate, number
from .data import Split, iterate_batches, memory_format
from .errors import DivergedError, UserError
from .seeding import generator
from .settings import Setting, defaults, with_defaults

# Denormal floats (tiny activations/gradients) make CPU kernels crawl - on some virtual machines a training step
# went from 0.05 s to minutes. Flushing them to zero changes nothing that matters for training; it must happen
# before PyTorch starts its worker threads, which copy the setting: every job and every training or evaluation
# path imports this module before its first computation.
torch.set_flush_denormal(True)

SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
OPTIMIZERS = ("SGD", "Adam")


def training_recipe(*, epochs: int, batch_size: int, lr: float, optimizer: str = "SGD", momentum: float = 0.9,
                    weight_decay: float = 5e-4, schedule: str = "multistep", milestones=(100, 130),
                    gamma: float = 0.1, augment: str = "flip") -> dict[str, Setting]:
    """The settings of a training recipe (section ``train``), declared once for every loop that has one: the
    classifier's (attack.py) and REFINE's, each with its own defaults (the paper's)."""
    return {
        "epochs": Setting(epochs, "training epochs", integer(1), "train", aliases=("--epoch",)),
        "batch_size": Setting(batch_size, "training batch size", integer(1), "train", aliases=("--batch_size",)),
        "lr": Setting(lr, "learning rate", learning_rate(), "train"),
        "optimizer": Setting(optimizer, "optimizer", choice(OPTIMIZERS, casefold=True), "train",
                             aliases=("--optim",)),
        "momentum": Setting(momentum, "SGD momentum", number(0, 1, hi_open=True), "train"),
        "weight_decay": Setting(weight_decay, "weight decay", number(0), "train"),
        "schedule": Setting(schedule, "learning-rate schedule", choice(SCHEDULES), "train"),
        "milestones": Setting(list(milestones), "epochs at which the multistep schedule multiplies the rate by "
                                                "--gamma", int_list(0), "train"),
        "gamma": Setting(gamma, "multistep factor", number(0, lo_open=True), "train", aliases=("--decay",)),
        "augment": Setting(augment, "augmentation of the training batches (core/augment.py)",
                           choice(AUGMENTATIONS), "train"),
    }


# The paper's training of backdoored models (Appendix C and the authors' code): SGD 0.1, momentum 0.9, wd 5e-4,
# batch 128, 150 epochs, lr x0.1 at epochs 100 and 130, horizontal flips only (BackdoorBox adds random crops:
# --augment crop_flip).
CLASSIFIER_RECIPE = {
    **training_recipe(epochs=150, batch_size=128, lr=0.1),
    "label_smoothing": Setting(0.0, "label smoothing of the cross-entropy", number(0, 1), "train"),
}


def resolve_device(name: str | None = None) -> torch.device:
    """'auto'/None -> cuda if available else cpu; 'cuda:1', 'cpu' or a bare GPU index ('0') otherwise."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = f"cuda:{name}" if str(name).isdigit() else str(name)
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or a GPU index N, got {name!r}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or a GPU index N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device


def device_name(device: torch.device) -> str:
    """What a run's metrics record as its machine: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)" if device.type == "cpu" else device.type


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

    ``modules``: name -> what the file holds, anything with ``state_dict()``/``load_state_dict()``: modules,
    optimizers, :class:`RandomStream`, a small state object of the caller's. ``optimizer`` (optional) is saved
    under a key of its own, as in the classifier's and REFINE's files. Besides them the file holds the number
    of epochs done, the mean losses of the last one (what :func:`fit` returns when it resumes after the last
    epoch) and, for a stage of :class:`Stages`, whether it is finished and its value. ``fingerprint`` is the
    resolved config that must match for a resume: starting the same command again continues; starting a
    different one in the same folder is refused instead of mixing runs.

    ``scratch``: names of parts that only serve to resume the run mid-way (a stage's own optimizer or random
    streams): the save of the last epoch leaves them out. ``on_finish()`` runs after that save.
    """

    def __init__(self, path, modules: dict, optimizer=None, fingerprint: dict | None = None, *,
                 scratch: tuple[str, ...] = (), on_finish: Callable[[], None] | None = None):
        self.path, self.modules, self.optimizer = Path(path), dict(modules), optimizer
        self.fingerprint = fingerprint if fingerprint is not None else {}
        self.scratch, self.on_finish = tuple(scratch), on_finish
        self.means: dict[str, float] = {}  # of the last epoch saved or loaded
        self.value = None  # a finished stage's value (Stages.once)

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
        """Restores the saved state if any; returns the number of epochs already done (0 for a new run).

        A finished stage's file may lack parts (its scratch parts, and those a later stage superseded: see
        :class:`Stages`); they are left as they are."""
        blob = self.read(self.path, self.fingerprint)
        if blob is None:
            return 0
        saved = blob.get("modules", {})
        for name, part in self.modules.items():
            if name in saved:
                part.load_state_dict(saved[name])
            elif not blob.get("finished"):
                raise UserError(f"{self.path} holds no state of {name!r}: it was not saved by this version of the "
                                f"toolkit; use --fresh to start over")
        if self.optimizer is not None:
            self.optimizer.load_state_dict(blob["optimizer"])
        self.means, self.value = dict(blob.get("means") or {}), blob.get("value")
        return int(blob["epoch"])

    def save(self, epoch: int, means: dict | None = None, finished: bool = False, value=None) -> None:
        """Writes the state after ``epoch`` epochs; ``finished``: the last one (scratch parts are left out)."""
        self.means = dict(means or {})
        blob = {"epoch": epoch, "fingerprint": self.fingerprint, "means": self.means, "finished": finished,
                "modules": {n: m.state_dict() for n, m in self.modules.items()
                            if not (finished and n in self.scratch)}}
        if self.optimizer is not None:
            blob["optimizer"] = self.optimizer.state_dict()
        if value is not None:
            blob["value"] = value
        atomic_save(blob, self.path)
        if finished and self.on_finish is not None:
            self.on_finish()


class RandomStream:
    """A ``torch.Generator`` as a part of an :class:`EpochState`: a stream that a phase draws from across its
    epochs continues after a resume where it stopped."""

    def __init__(self, gen: torch.Generator):
        self.generator = gen

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


class Stages:
    """The resumable state of a run made of named stages run in a fixed order (BTI-DBF's ``round2/mask``,
    Neural Cleanse's ``triggers/classes0-3``): one :class:`EpochState` file per stage in ``folder``
    (``folder/round2/mask.pth``), saved at the end of every epoch of the stage by :func:`fit`.

    A resumed run runs its code again from the start, and every stage takes up its own file: a finished
    stage runs no epoch and restores what it saved as it finished (:func:`fit` returns its last means,
    :meth:`once` its value); an unfinished one continues after its last saved epoch; later ones start afresh.
    The rule for a stage's code: everything it changes that is read later - modules, optimizers, random
    streams that continue (:class:`RandomStream`), state objects - is one of its parts (:meth:`state`), or
    its value (:meth:`once`). Then each stage starts from exactly the state it had in an uninterrupted run.

    Parts named in ``scratch`` only serve to resume the stage itself (its own optimizer, its own random
    streams) and are dropped from its file when it finishes. When a stage finishes, the parts of earlier
    stages that are the same objects as its own (the generator trained again by the next round) are dropped
    from their files: its state supersedes them, so the folder holds about one copy of each part.
    ``folder`` None: nothing is saved or restored (:meth:`state` returns None; every stage runs).
    """

    def __init__(self, folder=None, fingerprint: dict | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.fingerprint = fingerprint if fingerprint is not None else {}
        self._parts: dict[str, dict] = {}  # stage -> its parts, in the order the stages ran in this process

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pth"

    def state(self, name: str, parts: dict, scratch: tuple[str, ...] = ()) -> EpochState | None:
        """The :class:`EpochState` of stage ``name`` for :func:`fit` (None without a folder)."""
        if self.folder is None:
            return None
        self._parts[name] = dict(parts)
        return EpochState(self.path(name), parts, None, self.fingerprint, scratch=scratch,
                          on_finish=lambda: self._supersede(name))

    def once(self, name: str, compute: Callable[[], object], parts: dict | None = None):
        """A stage without epochs: returns ``compute()``, saved with ``parts`` as they are afterwards; once the
        stage is saved, returns its saved value and restores ``parts`` instead of computing again. The value
        must load with ``weights_only`` (numbers, strings, tensors, lists, tuples, dicts)."""
        state = self.state(name, parts or {})
        if state is None:
            return compute()
        if state.load():
            return state.value
        value = compute()
        state.save(1, finished=True, value=value)
        return value

    def _supersede(self, name: str) -> None:
        mine = {id(part) for part in self._parts[name].values()}
        for earlier, parts in self._parts.items():
            if earlier == name:
                break
            stale = [n for n, part in parts.items() if id(part) in mine]
            path = self.path(earlier)
            if stale and path.is_file():
                blob = safe_load(path)
                if blob.get("finished") and any(n in blob.get("modules", {}) for n in stale):
                    blob["modules"] = {n: s for n, s in blob["modules"].items() if n not in stale}
                    atomic_save(blob, path)


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

    def check(self, every_rank: bool = False) -> None:
        """Raises if the loss diverged; ``every_rank``: under torchrun, if it diverged on any rank (all stop)."""
        if self.first is None:
            return
        step = int(self.first.item())
        if every_rank and distributed.any_rank(step != self.NONE, self.first.device) and step == self.NONE:
            raise DivergedError(f"the loss diverged on another rank in epoch {self.epoch + 1}: training "
                                f"diverged; {self.hint}")
        if step != self.NONE:
            raise DivergedError(f"loss became {float(self.value.item())} at epoch {self.epoch + 1}, step {step + 1}: "
                                f"training diverged; {self.hint}")

    def check_weights(self, parameters) -> None:
        """At the end of an epoch: a step taken from a finite loss can still leave NaN or infinite weights (a
        huge learning rate), which the loss shows only one step later - or never, after the last step."""
        finite = [p.detach().isfinite().all() for p in parameters]
        if finite and not bool(torch.stack(finite).all()):
            raise DivergedError(f"weights became NaN or infinite in epoch {self.epoch + 1}: training diverged; "
                                f"{self.hint}")


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


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Context: ``modules`` in eval mode with ``requires_grad`` off; every submodule's mode and every
    parameter's flag are restored on exit, also when the block raises. A frozen module's weights get no
    gradient and its BatchNorm layers read, and never update, their running statistics; gradients still
    flow through it to its input."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    flags = [(p, p.requires_grad) for module in modules for p in module.parameters()]
    try:
        for module in modules:
            module.eval().requires_grad_(False)
        yield
    finally:
        for p, flag in reversed(flags):
            p.requires_grad_(flag)
        for m, mode in reversed(modes):
            m.training = mode


@contextlib.contextmanager
def modes_kept(*modules: nn.Module):
    """Context: every submodule's train/eval mode as it was on entry, restored on exit (also on an exception)."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield
    finally:
        for m, mode in reversed(modes):
            m.training = mode


_frozen = frozen  # fit's parameter ``frozen`` hides the function inside fit


class EpochStreams:
    """The random streams of one epoch, by name: ``streams("augment")`` is a generator seeded from (seed,
    prefix + name, epoch), on ``device`` except for "shuffle" (the batch order is drawn on the CPU). Each
    epoch has its own streams, so a resumed run draws exactly what an uninterrupted one would."""

    def __init__(self, seed: int, prefix: str, epoch: int, device: torch.device):
        self.seed, self.prefix, self.epoch, self.device = seed, prefix, epoch, device
        self._made: dict[str, torch.Generator] = {}
        # under torchrun the batch order is global and every other stream is the rank's own (core.distributed)
        self.rank_tag = f"rank{distributed.rank()}-of-{distributed.world()}/" if distributed.active() else ""

    def __call__(self, name: str) -> torch.Generator:
        if name not in self._made:
            device = None if name == "shuffle" else self.device
            tag = "" if name == "shuffle" else self.rank_tag
            self._made[name] = generator(self.seed, tag + self.prefix + name, self.epoch, device=device)
        return self._made[name]


def fit(
    loss_fn: Callable,
    modules: dict[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    device,
    seed: int = 0,
    streams: str = "",
    trainable: tuple[str, ...] = (),
    frozen: tuple[nn.Module, ...] = (),
    prepare: Callable | None = None,
    extra: torch.Tensor | None = None,
    lr: float | None = None,
    lr_at: Callable[[float], float] | None = None,
    amp: bool = False,
    compile: bool = False,
    state: EpochState | None = None,
    evaluate: Callable[[int], dict] | None = None,
    eval_every: int = 1,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
    desc: str = "epoch",
    hint: str = "lower the learning rate (--lr)",
    guard_every: int = 20,
    log_epochs: bool = True,
) -> dict[str, float]:
    """The one training loop of the toolkit (attack training, REFINE, BTI-DBF, Neural Cleanse, the baselines).

    Per step: ``x = prepare(x, y, extra_batch, streams)`` (augmentation, an attack's hook: outside any compiled
    graph), then ``loss, parts = loss_fn(x, y, mods)`` (the forward pass, under bf16 autocast on CUDA when
    ``amp``: loss functions do not call autocast themselves; ``mods`` is ``modules`` or their compiled
    versions), backward, ``optimizer.step()``. ``images``: uint8 or float N×C×H×W and ``labels`` N
    (pseudo-labels, -1 placeholders, anything the loss reads) are batched on ``device`` in a seeded shuffle.

    ``trainable``: the names in ``modules`` put in training mode every epoch; the others stay in eval mode
    (frozen BatchNorm). ``frozen``: modules the loss reads but does not train, held in :func:`frozen` (eval
    mode, no weight gradients) for the whole call. Every module's mode (and the frozen ones' ``requires_grad``
    flags) is restored when fit returns or raises. ``lr``/``lr_at``: base learning rate and its multiplier at
    ``epoch + fraction`` (see :func:`lr_factor`); without them the optimizer's rate is left alone.
    ``streams``: prefix of the per-epoch random streams (:class:`EpochStreams`). ``compile``: full batches
    through ``torch.compile`` (the last, smaller batch eagerly; eager again where compilation fails).
    ``state``: resumable :class:`EpochState` (saved after every epoch, after ``on_epoch_end`` and
    ``evaluate``); when it holds every epoch already, nothing runs and its saved means are returned.
    ``on_epoch_end(epochs_done, means)`` runs after every epoch (a schedule that follows the losses; what it
    changes must be in ``state``); ``evaluate(epochs_done)`` every ``eval_every`` epochs and after the last.
    A non-finite loss raises :class:`DivergedError` (:class:`LossGuard`) before the epoch is logged,
    evaluated or saved. Returns the mean loss and parts of the last epoch.
    """
    device = torch.device(device)
    start = state.load() if state else 0
    if start and start >= epochs:
        log(f"{desc}: its {epochs} epochs were done before ({state.path}); nothing to run")
        return dict(state.means)
    if start:
        log(f"resuming {desc} from the end of epoch {start}/{epochs} ({state.path})")
    images, labels = images.to(device), labels.to(device)
    extra = extra.to(device) if extra is not None else None
    steps = math.ceil(len(labels) / batch_size)
    trained = [p for name in trainable for p in modules[name].parameters()]
    for name in trainable:  # under torchrun: every rank starts from rank 0's weights (no-ops otherwise)
        distributed.broadcast_module(modules[name])
    guard = LossGuard(every=guard_every, hint=hint)
    fast = {k: torch.compile(m) for k, m in modules.items()} if compile else modules

    def backward(mods, x, y):
        with autocast(device, amp):
            loss, parts = loss_fn(x, y, mods)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, parts

    means: dict[str, float] = {}
    with modes_kept(*modules.values()), _frozen(*frozen):
        for epoch in range(start, epochs):
            for name, module in modules.items():
                module.train(name in trainable)
            guard.start_epoch(epoch, device)
            rng = EpochStreams(seed, streams, epoch, device)
            sums: dict[str, torch.Tensor] = {}
            seen, t0 = 0, time.time()
            bar = tqdm(iterate_batches(images, labels, batch_size, device, shuffle=True, generator=rng("shuffle"),
                                       extra=extra, part=distributed.batch_slice if distributed.active() else None),
                       total=steps, desc=f"{desc} {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                       disable=None)
            for step, (x, y, *rest) in enumerate(bar):
                if lr_at is not None:
                    set_lr(optimizer, lr, lr_at(epoch + step / steps))
                if prepare is not None:
                    x = prepare(x, y, rest[0] if rest else None, rng)
                if fast is not modules and len(x) == batch_size:
                    (loss, parts), fast = try_compiled(lambda mods: backward(mods, x, y), fast, modules, log)
                else:
                    loss, parts = backward(modules, x, y)
                distributed.average_gradients(trained, weight=len(x))  # under torchrun: the global batch's
                optimizer.step()
                guard.update(loss, step)
                seen += len(x)
                for k, v in {"loss": loss, **parts}.items():
                    sums[k] = sums.get(k, 0) + v.detach().float() * len(x)
                if step % 10 == 0 and not bar.disable:  # .item() waits for the GPU: only for a visible bar
                    bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
            guard.check(every_rank=True)  # a diverged epoch is neither logged as done, evaluated nor saved
            guard.check_weights(trained)
            sums = distributed.sum_tensors({**sums, "_seen": torch.tensor(float(seen))}, device)
            seen_all = float(sums.pop("_seen"))
            means = {k: (v / max(seen_all, 1)).item() for k, v in sums.items()}
            distributed.broadcast_buffers(*(modules[name] for name in trainable))  # rank 0's BatchNorm statistics
            if log_epochs:
                log(f"{desc} {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
                    + f", {seen_all / (time.time() - t0):.0f} img/s, lr {optimizer.param_groups[0]['lr']:.5f}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, means)
            # evaluate before saving: an interruption in between repeats the epoch rather than skipping its
            # evaluation
            if evaluate and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
                evaluate(epoch + 1)
            if state:
                state.save(epoch + 1, means, finished=epoch + 1 == epochs)
    return means


def classifier_batches(augment: str, layout, batch_hook: Callable | None = None, hook_after_augment: bool = False):
    """The ``prepare`` step of :func:`fit` for a classifier's training batches: the attack's per-batch hook
    (``batch_hook(x, roles, generator)``, before the augmentation or after it with ``hook_after_augment``) and the
    named augmentation, each from its own random stream of the epoch; the batch in the device's memory ``layout``."""
    augment_fn = AUGMENTATIONS[augment]

    def prepare(x, y, batch_roles, rng):
        if batch_hook is not None and not hook_after_augment:
            x = batch_hook(x, batch_roles, generator=rng("attack-hook"))
        x = augment_fn(x, generator=rng("augment"))
        if batch_hook is not None and hook_after_augment:
            x = batch_hook(x, batch_roles, generator=rng("attack-hook"))
        return x.contiguous(memory_format=layout)
    return prepare


def train_classifier(
    model: nn.Module,
    train: Split,
    *,
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
    hook_after_augment: bool = False,
    compile: bool = False,
    fused: bool = False,
    **recipe,
) -> nn.Module:
    """Trains ``model`` (images in [0, 1] -> logits) with cross-entropy on ``train``, through :func:`fit`.

    ``recipe``: the settings of :data:`CLASSIFIER_RECIPE` (``epochs``, ``batch_size``, ``lr``, ``optimizer``,
    ``momentum``, ``weight_decay``, ``schedule``, ``milestones``, ``gamma``, ``label_smoothing``, ``augment``),
    each defaulting to its declaration (the paper's). The training images go to ``device`` once, as uint8;
    batches are augmented there. With ``state_path`` the run is resumable: the epoch state is saved after every
    epoch and reloaded on start. ``evaluate(epoch)`` is called every ``eval_every`` epochs and after the last one.
    A non-finite loss raises :class:`DivergedError` (see :class:`LossGuard`); the state of the last good epoch
    stays saved. ``batch_hook(x, roles, generator)``: an attack's per-batch transformation (see
    :meth:`core.attacks.Attack.train_hook`), applied before ``augment``, or after it with ``hook_after_augment``
    (a trigger that the augmentation must not alter, e.g. BATT's rotation, which a flip would mirror); ``roles``:
    uint8 N, each sample's role. :meth:`core.attacks.Attack.hook_arguments` gives these three for an attack.
    ``compile``: full batches run through ``torch.compile(model)`` (eager again where compilation fails);
    ``fused``: fused optimizer kernels on CUDA. Both are speed-ups only: the same computation.
    """
    recipe = with_defaults(CLASSIFIER_RECIPE, recipe, "train_classifier")
    epochs, batch_size, lr, optimizer = recipe["epochs"], recipe["batch_size"], recipe["lr"], recipe["optimizer"]
    momentum, weight_decay, schedule = recipe["momentum"], recipe["weight_decay"], recipe["schedule"]
    milestones, gamma, label_smoothing = recipe["milestones"], recipe["gamma"], recipe["label_smoothing"]
    augment = recipe["augment"]
    device = torch.device(device)
    layout = memory_format(device)
    model.to(device).to(memory_format=layout)
    opt = make_optimizer(model.parameters(), optimizer, lr, momentum, weight_decay, fused=fused)
    if batch_hook is not None and roles is None:
        raise ValueError("batch_hook needs the roles of the training samples")
    prepare = classifier_batches(augment, layout, batch_hook, hook_after_augment)

    def loss_fn(x, y, mods):
        logits = mods["model"](x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean().detach()}

    fit(loss_fn, {"model": model}, train.images, train.labels, optimizer=opt, epochs=epochs, batch_size=batch_size,
        device=device, seed=seed, trainable=("model",), prepare=prepare, amp=amp,
        extra=roles if batch_hook is not None else None, lr=lr,
        lr_at=lambda progress: lr_factor(schedule, progress, epochs, milestones, gamma), compile=compile,
        state=EpochState(state_path, {"model": model}, opt, fingerprint or {}) if state_path else None,
        evaluate=evaluate, eval_every=eval_every, log=log)
    return model
