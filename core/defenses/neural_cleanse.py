"""Neural Cleanse (Wang et al., IEEE S&P 2019): trigger reverse-engineering and MAD outlier detection.

For every class c a trigger — a mask m_c in [0, 1]^{H×W} shared by the channels and a pattern
p_c in [0, 1]^{C×H×W} — is optimised on the defender's clean images to send them all to c with the
smallest possible mask:

    min  CE(f((1 − m) ⊙ x + m ⊙ p), c) + λ · |m|_1,     m = tanh(w_m)/2 + 1/2,  p = tanh(w_p)/2 + 1/2

with Adam (lr 0.1, betas (0.5, 0.9)) and a dynamic λ. Two schedules (``NCConfig.schedule``):

* ``authors`` (the default): NC's runnable example (bolunwang/backdoor, ``gtsrb_visualize_example.py`` with
  ``visualizer.py``'s ``Visualizer.visualize``). λ starts at 0; after ``patience`` epochs in a row whose attack
  success reached 99 % it is set to ``init_cost``; from then on ×``cost_multiplier`` after ``patience`` epochs
  in a row at 99 %, ÷``cost_multiplier``**1.5 after ``patience`` epochs in a row below. The best mask is the
  end-of-epoch mask of the successful epoch with the smallest *epoch-average* mask L1. A class stops early once
  λ has moved both up and down and its best average L1 has not strictly improved for ``early_stop_patience``
  epochs; at most ``epochs`` epochs.
* ``fixed``: this toolkit's version-1 schedule, kept for CPU budgets (the mini preset): exactly ``epochs``
  epochs, λ starts at ``init_cost`` (the same ×/÷ moves), no early stop, the best mask judged by its own
  end-of-epoch L1 norm.

A backdoor is a shortcut to its target class, so the target's mask is far smaller than the others'; the
MAD anomaly index (median − norm_c) / (1.4826 · median |norm − median|) flags classes whose index is
above 2 (only masks smaller than the median count).

Differences from NC's Keras code, on purpose: images are in [0, 1] (the model's normalisation lives in
:class:`core.models.Classifier`); an epoch is one pass over the defender's images in :func:`core.train.fit`'s
seeded shuffle (NC's example: 31 batches of 32 drawn from a shuffling generator over the test set; the batch
size here is the caller's: the NC defense shares BTI-DBF's 128).
``NCConfig.classes_per_pass`` > 1 optimises several classes in one batched forward (the same result, fewer
and larger kernel calls); all classes see the same batch order, and a class that stopped early is frozen (its
records no longer change) while the others of its group go on. The optimisation runs through
:func:`core.train.fit` (its seeded shuffle, its divergence guard; the λ schedule at each epoch's end; an early
stop ends fit's loop by an exception from that hook, and the stage is then saved as finished), and each group
of classes is a stage of a resumable run (:class:`core.train.Stages`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import Split
from ..errors import UserError
from ..seeding import generator
from ..train import Stages, fit, frozen, resolve_device
from ..checks import choice, integer, learning_rate, number
from ..settings import Setting
from .base import Defense, FitContext, defender_share, register_defense
from .bti_dbf import BTI_DBF_SETTINGS, BTIDBFConfig, _frozen_copy, build_generator, pretrain_generator, train_purifier
from .parts import DeployedModel, Purifier

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of a normal distribution's standard deviation


SCHEDULES = ("authors", "fixed")


@dataclass(frozen=True)
class NCConfig:
    """Neural Cleanse's hyper-parameters. Defaults: NC's runnable example (bolunwang/backdoor,
    ``gtsrb_visualize_example.py``), except the batch size (the caller's) and ``classes_per_pass``."""

    schedule: str = "authors"  # "authors" (NC's example) or "fixed" (this toolkit's version 1): module docstring
    # epochs per class: the cap under the authors' schedule (NC's STEPS = 1000), the exact count under "fixed"
    epochs: int = 1000
    batch_size: int = 128
    lr: float = 0.1  # Adam's learning rate on w_m and w_p (NC's LR)
    betas: tuple[float, float] = (0.5, 0.9)  # Adam's betas in NC's code
    init_cost: float = 1e-3  # NC's INIT_COST: λ once set (authors) / from the start (fixed)
    # λ up ×cost_multiplier, down ÷cost_multiplier**1.5: NC's example passes COST_MULTIPLIER = 2 (visualizer.py's
    # class default "1.5," is a tuple, which this toolkit's version 1 read as 1.5)
    cost_multiplier: float = 2.0
    patience: int = 5  # NC's PATIENCE: epochs in a row at / below the success threshold before λ is set or moves
    success_threshold: float = 0.99  # NC's ATTACK_SUCC_THRESHOLD: attack success that counts as reached
    # authors' schedule: epochs without a strictly smaller best mask (ratio ≥ early_stop_threshold) before a class
    # stops, once λ has moved both up and down; NC's EARLY_STOP_PATIENCE = 5 · PATIENCE, EARLY_STOP_THRESHOLD 1.0
    early_stop_patience: int = 25
    early_stop_threshold: float = 1.0
    anomaly_threshold: float = 2.0  # a class is flagged when its anomaly index exceeds this
    # classes optimised together, one forward of classes_per_pass × batch_size images per step: the same result,
    # much faster for small images; 1 (NC's one class at a time) is the memory-safe default for large ones
    classes_per_pass: int = 1

    def validated(self) -> "NCConfig":
        """Itself, or a UserError naming the first setting out of range."""
        checks = [("schedule", self.schedule in SCHEDULES),
                  ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1), ("lr", self.lr > 0),
                  ("init_cost", self.init_cost >= 0), ("cost_multiplier", self.cost_multiplier > 1),
                  ("patience", self.patience >= 1), ("success_threshold", 0 < self.success_threshold <= 1),
                  ("early_stop_patience", self.early_stop_patience >= 1),
                  ("early_stop_threshold", self.early_stop_threshold > 0),
                  ("anomaly_threshold", self.anomaly_threshold > 0),
                  ("classes_per_pass", self.classes_per_pass >= 1)]
        for name, ok in checks:
            if not ok:
                raise UserError(f"Neural Cleanse setting {name}={getattr(self, name)!r} is out of range")
        return self


@dataclass
class InvertedTrigger:
    """One class's reverse-engineered trigger: ``mask`` H×W and ``pattern`` C×H×W, float in [0, 1] on the CPU.

    ``norm``: the mask's L1 norm; ``success``: the attack success (0..1: the share of the images sent to the
    class, over the epoch the trigger comes from; NC's code averages per batch, the same but for a shorter last
    batch); ``reached``: whether that success reached the threshold (False: the last epoch's trigger, a
    fallback); ``cost``: λ at the end of the optimisation.
    """

    mask: torch.Tensor
    pattern: torch.Tensor
    norm: float
    success: float
    reached: bool
    cost: float


@dataclass
class NCResult:
    """Neural Cleanse's verdict on one model.

    ``norms``: float64 K, the L1 norm of each class's mask; ``anomaly_indices``: float64 K (see
    :func:`anomaly_indices`); ``flagged``: classes whose index exceeds ``threshold``, most anomalous first;
    ``target``: the most anomalous class (NC's detected target when the model is flagged at all);
    ``triggers``: the inverted trigger of every class, index = class.
    """

    norms: torch.Tensor
    anomaly_indices: torch.Tensor
    median: float
    mad: float
    threshold: float
    flagged: list[int]
    target: int
    triggers: list[InvertedTrigger]

    @property
    def backdoored(self) -> bool:
        """True when some class is flagged."""
        return bool(self.flagged)

    @property
    def masks(self) -> torch.Tensor:
        """K×H×W in [0, 1]."""
        return torch.stack([t.mask for t in self.triggers])

    @property
    def patterns(self) -> torch.Tensor:
        """K×C×H×W in [0, 1]."""
        return torch.stack([t.pattern for t in self.triggers])

    def summary(self) -> dict:
        """JSON-ready numbers (no tensors)."""
        return {"norms": self.norms.tolist(), "anomaly_indices": self.anomaly_indices.tolist(), "median": self.median,
                "mad": self.mad, "threshold": self.threshold, "flagged": self.flagged, "target": self.target,
                "backdoored": self.backdoored, "success": [t.success for t in self.triggers]}


def apply_inverted_trigger(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 − m) ⊙ x + m ⊙ p: stamps an inverted trigger on images.

    ``x``: float N×C×H×W in [0, 1]; ``mask``: H×W (or broadcastable to x) in [0, 1]; ``pattern``: C×H×W in [0, 1].
    Returns float N×C×H×W in [0, 1], on x's device and in its dtype; a zero mask returns x's values exactly.
    """
    mask, pattern = mask.to(x), pattern.to(x)
    mask = mask[None, None] if mask.dim() == 2 else mask
    # a convex combination: the clamp only removes rounding past 0 or 1, so the output is a valid image
    return (x + mask * (pattern - x)).clamp_(0, 1)


def mask_and_pattern(w_mask: torch.Tensor, w_pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NC's box-constraint-free parameterisation: any real w maps into [0, 1] with a non-zero gradient."""
    return torch.tanh(w_mask) / 2 + 0.5, torch.tanh(w_pattern) / 2 + 0.5


def _median(values: torch.Tensor) -> torch.Tensor:
    """The mean of the two middle values for an even count (numpy's median, as NC's code): ``torch.median``
    returns the lower one, which moves the centre and the MAD of a 10-class model."""
    ordered = values.sort().values
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def anomaly_indices(norms: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """NC's MAD anomaly index of each class: ``(median − norm_c) / MAD``, MAD = 1.4826 · median(|norm − median|).

    ``norms``: K mask L1 norms. Returns (float64 K indices, median, MAD). Positive indices are masks smaller than
    the median (the suspicious side); larger masks get negative indices and are never flagged. With a MAD of 0
    (more than half of the norms equal), a norm below the median gets +inf and one equal to it 0.
    """
    norms = norms.detach().double().cpu()
    median = _median(norms)
    mad = MAD_CONSISTENCY * _median((norms - median).abs())
    deviation = median - norms
    if mad > 0:
        index = deviation / mad
    else:
        index = torch.where(deviation == 0, torch.zeros_like(deviation), deviation * math.inf)
    return index, float(median), float(mad)


def flagged_classes(indices: torch.Tensor, threshold: float = 2.0) -> list[int]:
    """Classes whose anomaly index (see :func:`anomaly_indices`) exceeds ``threshold``, most anomalous first.
    Only masks smaller than the median have positive indices, so an unusually large mask is never flagged."""
    return [c for c in indices.argsort(descending=True, stable=True).tolist() if indices[c] > threshold]


def _initial_weights(targets: list[int], channels: int, height: int, width: int, seed: int, device
                     ) -> nn.ParameterDict:
    """Seeded w_m (``mask``, G×H×W) and w_p (``pattern``, G×C×H×W) for a group of G classes. Each class draws
    from its own stream, so its start does not depend on how the classes are grouped. NC starts from a uniformly
    random mask and pattern in [0, 1], taken back through the tanh parameterisation (clamped off the saturated,
    gradient-free ends)."""
    to_w = lambda v: torch.atanh((2 * v - 1).clamp(-0.999, 0.999))  # noqa: E731 - inverse of tanh(w)/2 + 1/2
    masks, patterns = [], []
    for target in targets:
        g = generator(seed, "neural-cleanse-init", target)
        masks.append(to_w(torch.rand(height, width, generator=g)))
        patterns.append(to_w(torch.rand(channels, height, width, generator=g)))
    return nn.ParameterDict({"mask": nn.Parameter(torch.stack(masks).to(device)),
                             "pattern": nn.Parameter(torch.stack(patterns).to(device))})


class _CostSchedule:
    """The dynamic λ of one class and, under the authors' schedule, its early stop (the module docstring).

    :meth:`end_epoch` follows ``Visualizer.visualize``'s order: the best-mask check, the early-stop check (a
    stop leaves λ as it is), then λ: set from 0 to ``init_cost`` after ``patience`` reached epochs in a row
    (authors only; the up/down counters and flags restart there), ×multiplier after ``patience`` reached epochs
    in a row, ÷multiplier**1.5 after ``patience`` missed ones (each counter restarts after its move)."""

    STATE = ("cost", "up_counter", "down_counter", "set_counter", "up_flag", "down_flag", "reg_best",
             "early_stop_counter", "early_stop_reg_best", "stopped")

    def __init__(self, config: NCConfig):
        self.config, self.authors = config, config.schedule == "authors"
        self.cost = 0.0 if self.authors else config.init_cost
        self.up_counter = self.down_counter = self.set_counter = self.early_stop_counter = 0
        self.up_flag = self.down_flag = self.stopped = False
        self.reg_best = self.early_stop_reg_best = math.inf  # the best mask's score (inf: none yet)

    def end_epoch(self, reached: bool, score: float) -> bool:
        """One epoch's end: ``reached`` whether its attack success reached the threshold, ``score`` its mask's
        score (authors: the epoch-average L1; fixed: the end-of-epoch L1). Returns whether its mask is the new
        best. Afterwards ``stopped`` says whether the class stops here (authors' schedule only)."""
        config = self.config
        best = reached and score < self.reg_best
        if best:
            self.reg_best = score
        if self.authors:
            if self.reg_best < math.inf:  # only once a valid mask exists
                no_gain = self.reg_best >= config.early_stop_threshold * self.early_stop_reg_best
                self.early_stop_counter = self.early_stop_counter + 1 if no_gain else 0
            self.early_stop_reg_best = min(self.reg_best, self.early_stop_reg_best)
            if self.up_flag and self.down_flag and self.early_stop_counter >= config.early_stop_patience:
                self.stopped = True
                return best
            if self.cost == 0 and reached:
                self.set_counter += 1
                if self.set_counter >= config.patience:
                    self.cost = config.init_cost
                    self.up_counter = self.down_counter = 0
                    self.up_flag = self.down_flag = False
            else:
                self.set_counter = 0
        self.up_counter, self.down_counter = (self.up_counter + 1, 0) if reached else (0, self.down_counter + 1)
        if self.up_counter >= config.patience:
            self.up_counter, self.up_flag = 0, True
            self.cost *= config.cost_multiplier
        elif self.down_counter >= config.patience:
            self.down_counter, self.down_flag = 0, True
            self.cost /= config.cost_multiplier ** 1.5
        return best

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state: dict) -> None:
        for k in self.STATE:
            setattr(self, k, state[k])


class _TriggerSearch:
    """What the optimisation of a group of classes carries from one epoch to the next besides w_m, w_p and
    Adam: each class's λ schedule, its best trigger (the smallest mask among the epochs whose success reached
    the threshold: by the epoch-average L1 under the authors' schedule, the end-of-epoch L1 under the fixed one)
    and its last one. A class that stopped early is no longer updated. Saved with them in a resumable run
    (``state_dict``/``load_state_dict``)."""

    def __init__(self, targets: list[int], config: NCConfig, device):
        self.config = config
        self.schedules = [_CostSchedule(config) for _ in targets]
        self.best: list[InvertedTrigger | None] = [None] * len(targets)
        self.last: list[InvertedTrigger | None] = [None] * len(targets)
        self.costs = torch.tensor([s.cost for s in self.schedules], device=device)  # λ of each class, on the device

    @property
    def stopped(self) -> bool:
        """Whether every class of the group has stopped early."""
        return all(s.stopped for s in self.schedules)

    def end_epoch(self, successes: list[float], mean_norms: list[float], weights: nn.ParameterDict) -> list[int]:
        """Records the epoch's triggers (``successes``: each class's attack success, 0..1; ``mean_norms``: its
        mask's L1 averaged over the epoch's images) and moves each λ. Returns the indices of the classes that
        stopped at this epoch."""
        with torch.no_grad():
            masks, patterns = (t.cpu() for t in mask_and_pattern(weights["mask"], weights["pattern"]))
        stopping = []
        for g, schedule in enumerate(self.schedules):
            if schedule.stopped:
                continue
            reached = successes[g] >= self.config.success_threshold
            self.last[g] = InvertedTrigger(masks[g].clone(), patterns[g].clone(), float(masks[g].sum()), successes[g],
                                           reached, schedule.cost)
            if schedule.end_epoch(reached, mean_norms[g] if schedule.authors else self.last[g].norm):
                self.best[g] = self.last[g]
            if schedule.stopped:
                stopping.append(g)
        self.costs = torch.tensor([s.cost for s in self.schedules], device=self.costs.device)
        return stopping

    def chosen(self) -> list[InvertedTrigger]:
        """Each class's best trigger, or its last one (marked reached=False) when no epoch reached the threshold;
        ``cost``: λ at the end."""
        return [replace(b or l, cost=s.cost) for b, l, s in zip(self.best, self.last, self.schedules)]

    def state_dict(self) -> dict:
        return {"schedules": [s.state_dict() for s in self.schedules],
                "best": [asdict(t) if t is not None else None for t in self.best],
                "last": [asdict(t) if t is not None else None for t in self.last]}

    def load_state_dict(self, state: dict) -> None:
        for schedule, saved in zip(self.schedules, state["schedules"]):
            schedule.load_state_dict(saved)
        self.best = [InvertedTrigger(**t) if t is not None else None for t in state["best"]]
        self.last = [InvertedTrigger(**t) if t is not None else None for t in state["last"]]
        self.costs = torch.tensor([s.cost for s in self.schedules], device=self.costs.device)


class _EarlyStop(Exception):
    """Raised from fit's ``on_epoch_end`` when every class of the group has stopped early: it ends fit's loop
    (before fit saves the epoch; :func:`reverse_engineer_triggers` saves the stage as finished)."""

    def __init__(self, epoch: int, means: dict):
        super().__init__(f"early stop after epoch {epoch}")
        self.epoch, self.means = epoch, means


def stamp_each_trigger(x: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Every image with every trigger: x B×C×H×W, masks G×H×W, patterns G×C×H×W (all in [0, 1]) ->
    (G·B)×C×H×W in [0, 1], trigger-major (rows g·B .. g·B + B − 1 carry trigger g)."""
    stamped = x[None] + masks[:, None, None] * (patterns[:, None] - x[None])  # G×B×C×H×W
    return stamped.flatten(0, 1)


def _group_name(targets: list[int]) -> str:
    first, last = targets[0], targets[-1]
    return f"classes{first}-{last}" if list(targets) == list(range(first, last + 1)) else \
        "classes" + "_".join(map(str, targets))


def reverse_engineer_triggers(forward: Callable, images: torch.Tensor, targets: list[int], config: NCConfig, *,
                              seed: int = 0, device="cpu", log: Callable[[str], None] = print,
                              stages: Stages | None = None) -> list[InvertedTrigger]:
    """Optimises the triggers of the classes ``targets`` together and returns each one's best trigger.

    The G classes share the batches and one forward of G·B images per step (far fewer, larger kernel calls),
    but nothing else: each class's loss term depends only on its own w_m, w_p, Adam is element-wise, and every
    class keeps its own λ schedule and best trigger, so the result is that of G separate runs.
    ``forward``: x (float N×C×H×W in [0, 1]) -> logits, with no weight gradients (a module is held frozen
    here: :func:`core.train.frozen`); ``images``: the clean images, uint8 or float in [0, 1], N×C×H×W, already
    on ``device``. The epochs run through :func:`core.train.fit`: its seeded shuffle is the batch order (the
    same for every group), the λ schedule and the best trigger are updated at each epoch's end from the epoch's
    success (the share of its images sent to the class) and mask L1 averaged over the epoch. Under the authors'
    schedule the run ends once every class of the group has stopped early. ``stages``: the run's resumable state
    (the stage ``triggers/classes<first>-<last>``, saved at every epoch end, and as finished at an early stop).
    """
    n, channels, height, width = images.shape
    group = torch.tensor(targets, device=device)
    weights = _initial_weights(targets, channels, height, width, seed, device)
    opt = torch.optim.Adam([weights["mask"], weights["pattern"]], lr=config.lr, betas=config.betas)
    search = _TriggerSearch(targets, config, device)
    name = f"class{'es' if len(targets) > 1 else ''} {','.join(map(str, targets))}"

    def loss_fn(x, y, mods):
        w = mods["trigger"]
        masks, patterns = mask_and_pattern(w["mask"], w["pattern"])
        logits = forward(stamp_each_trigger(x, masks, patterns)).reshape(len(targets), len(x), -1)  # G×B×K
        labels = group[:, None].expand(-1, len(x))
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels).mean(1)
        loss = (ce + search.costs * masks.flatten(1).sum(1)).sum()  # masks >= 0: their sum is the L1 norm
        hits = (logits.detach().argmax(2) == labels).float().mean(1)
        norms = masks.detach().flatten(1).sum(1)  # averaged over the epoch by fit: NC's avg_loss_reg
        return loss, {**{f"success{t}": hits[g] for g, t in enumerate(targets)},
                      **{f"l1_{t}": norms[g] for g, t in enumerate(targets)}}

    def on_epoch_end(epoch: int, means: dict) -> None:
        live = [g for g, s in enumerate(search.schedules) if not s.stopped]
        stopping = search.end_epoch([means[f"success{t}"] for t in targets], [means[f"l1_{t}"] for t in targets],
                                    weights)
        log(f"NC epoch {epoch}/{config.epochs}: " + "; ".join(
            f"class {targets[g]} success {100 * search.last[g].success:.1f}% mask L1 {search.last[g].norm:.1f} "
            f"cost {search.schedules[g].cost:.2e}" for g in live))
        for g in stopping:
            log(f"NC class {targets[g]}: early stop after epoch {epoch} (best mask L1 {search.best[g].norm:.1f})")
        if search.stopped:
            raise _EarlyStop(epoch, means)

    state = (stages.state(f"triggers/{_group_name(targets)}", {"trigger": weights, "optimizer": opt, "search": search},
                          scratch=("optimizer",)) if stages is not None else None)
    if state is not None and state.load() and search.stopped:  # fit would go on after the saved epoch: skip it
        log(f"NC {name}: stopped early before ({state.path}); nothing to run")
        return search.chosen()
    try:
        fit(loss_fn, {"trigger": weights}, images, torch.zeros(n, dtype=torch.int64), optimizer=opt,
            epochs=config.epochs, batch_size=config.batch_size, device=device, seed=seed, streams="neural-cleanse-",
            trainable=("trigger",), frozen=(forward,) if isinstance(forward, nn.Module) else (),
            on_epoch_end=on_epoch_end, state=state, log=log, desc=f"NC {name}",
            hint="lower Neural Cleanse's learning rate (nc_lr)", log_epochs=False)
    except _EarlyStop as stop:
        if state is not None:
            state.save(stop.epoch, stop.means, finished=True)
    return search.chosen()


def neural_cleanse(model: nn.Module, images: torch.Tensor, num_classes: int, config: NCConfig | None = None, *,
                   device=None, seed: int = 0, log: Callable[[str], None] = print, stages: Stages | None = None,
                   **overrides) -> NCResult:
    """Runs Neural Cleanse on ``model`` (x float N×C×H×W in [0, 1] -> logits N×num_classes).

    ``images``: the defender's clean images, uint8 or float in [0, 1], N×C×H×W (labels are not needed).
    ``config``: :class:`NCConfig` (default: its defaults); ``overrides``: NCConfig fields to replace, e.g.
    ``epochs=3``. ``device``: None/'auto' -> cuda if available; the model is moved there (its values are
    unchanged). ``seed``: decides every class's starting mask and pattern and the batch order. ``stages``: the
    run's resumable state (:class:`core.train.Stages`; one stage per group of classes).

    The model is left as it came: parameters, BatchNorm buffers, ``requires_grad`` flags and each submodule's
    train/eval mode (it runs frozen here, :func:`core.train.frozen`: BatchNorm statistics are read, not updated,
    and no gradient reaches the weights).
    """
    known = {f.name for f in fields(NCConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown Neural Cleanse setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = replace(config or NCConfig(), **overrides).validated()
    if num_classes < 2:
        raise UserError(f"Neural Cleanse compares the classes' triggers: it needs at least 2 classes, got {num_classes}")
    if images.dim() != 4 or len(images) == 0:
        raise UserError(f"Neural Cleanse needs a non-empty N×C×H×W batch of clean images, got shape "
                        f"{tuple(images.shape)}")
    device = resolve_device(device)
    model.to(device)
    images = images.to(device)  # uint8 stays uint8 (4× less memory); batches become float on the fly
    triggers = []
    with frozen(model):
        for first in range(0, num_classes, config.classes_per_pass):
            group = list(range(first, min(first + config.classes_per_pass, num_classes)))
            triggers += reverse_engineer_triggers(model, images, group, config, seed=seed, device=device, log=log,
                                                  stages=stages)
    norms = torch.tensor([t.norm for t in triggers], dtype=torch.float64)
    index, median, mad = anomaly_indices(norms)
    flagged = flagged_classes(index, config.anomaly_threshold)
    log(f"Neural Cleanse: mask L1 norms {[round(v, 1) for v in norms.tolist()]}, anomaly indices "
        f"{[round(v, 2) for v in index.tolist()]}; flagged {flagged or 'none'}")
    return NCResult(norms, index, median, mad, config.anomaly_threshold, flagged, int(index.argmax()), triggers)


__all__ = ["NCConfig", "NCResult", "InvertedTrigger", "anomaly_indices", "apply_inverted_trigger", "flagged_classes",
           "mask_and_pattern", "neural_cleanse", "reverse_engineer_triggers", "stamp_each_trigger"]


# -- behind the common defense interface (defend.py --defense NC) ------------------------------------------------
class _StampInNormalizedSpace(nn.Module):
    """Stamps one inverted trigger onto *normalized* images (the space BTI-DBF's purifier training works in):
    back to pixels, :func:`apply_inverted_trigger`, normalized again. Plays the role of BTI-DBF's generator G."""

    def __init__(self, normalize: nn.Module, mask: torch.Tensor, pattern: torch.Tensor):
        super().__init__()
        self.normalize = normalize
        self.register_buffer("mask", mask)
        self.register_buffer("pattern", pattern)

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        x = xn * self.normalize.std + self.normalize.mean if self.normalize.enabled else xn
        return self.normalize(apply_inverted_trigger(x, self.mask.to(x.dtype), self.pattern.to(x.dtype)))


@register_defense
class NeuralCleanseDefense(Defense):
    """Neural Cleanse, then (as the REFINE paper does) input purification with its inverted trigger: a purifier
    P (BTI-DBF's generator network) is pre-trained toward the identity, then trained exactly like BTI-DBF(P)'s
    second step with x ⊕ trigger in place of G(x), for the most anomalous class. The deployed model is
    ``model(P(x))``; NC's verdict (anomaly indices, flagged classes, target) goes to the run's metrics."""

    name = "NC"
    detects_target = True
    summary = "Neural Cleanse trigger inversion + MAD detection, then a purifier trained as BTI-DBF(P)'s second step"
    labelled = True
    order = 30
    aliases = ("NeuralCleanse",)
    # 2: the authors' λ schedule (cost 0 first, ×2 / ÷2**1.5, early stop, up to 1000 epochs) is the default;
    # version 1 ran 10 epochs of the fixed schedule with ×1.5
    version = 2
    settings = {
        "nc_schedule": Setting(
            NCConfig.schedule,
            "NC: λ schedule. authors: Wang et al.'s (bolunwang/backdoor, gtsrb_visualize_example.py with "
            "visualizer.py): λ starts at 0 and is set to nc_init_cost after nc_patience epochs in a row at >= 99 % "
            "attack success, then ×nc_cost_multiplier / ÷nc_cost_multiplier**1.5 after nc_patience epochs in a row "
            "at / below 99 %; the best mask by its epoch-average L1; a class stops early once λ has moved both ways "
            "and its best mask has not shrunk for nc_early_stop_patience epochs (at most nc_epochs). fixed: this "
            "toolkit's version 1, for CPU budgets (the mini preset): exactly nc_epochs epochs from λ = nc_init_cost, "
            "no early stop, the best mask by its end-of-epoch L1 (set nc_epochs with it: 1000 is the authors' cap)",
            choice(SCHEDULES)),
        "nc_epochs": Setting(NCConfig.epochs, "NC: epochs per class: at most this many under the authors' schedule, "
                                              "which stops early (1000: NC's STEPS), exactly this many under the "
                                              "fixed one", integer(1)),
        "nc_lr": Setting(NCConfig.lr, "NC: Adam's learning rate on the mask and pattern (NC's LR)", learning_rate()),
        "nc_init_cost": Setting(NCConfig.init_cost, "NC: weight λ of the mask's L1 norm once set (authors' schedule) "
                                                    "or from the start (fixed) (NC's INIT_COST)", number(0)),
        "nc_patience": Setting(NCConfig.patience, "NC: epochs in a row at / below 99 % attack success before λ is set "
                                                  "or moves (5: NC's PATIENCE in gtsrb_visualize_example.py; "
                                                  "visualizer.py's class default 10 is not what it runs)", integer(1)),
        "nc_cost_multiplier": Setting(NCConfig.cost_multiplier,
                                      "NC: λ up ×this, down ÷this**1.5 (2: NC's COST_MULTIPLIER in "
                                      "gtsrb_visualize_example.py; this toolkit's version 1 used 1.5, visualizer.py's "
                                      "class default, which is the tuple (1.5,) there)", number(1, lo_open=True)),
        "nc_early_stop_patience": Setting(NCConfig.early_stop_patience,
                                          "NC, authors' schedule: epochs without a strictly smaller best mask before "
                                          "a class stops, once λ has moved up and down (25: NC's EARLY_STOP_PATIENCE "
                                          "= 5 · PATIENCE, threshold 1.0)", integer(1)),
        "nc_classes_per_pass": Setting(10, "NC: classes optimised together in one batched forward (same result)",
                                       integer(1)),
        # the purifier: trained as BTI-DBF(P)'s second step, with BTI-DBF's settings
        **{key: BTI_DBF_SETTINGS[key] for key in ("batch_size", "generator_channels", "generator_blocks",
                                                  "pretrain_epochs", "purify_epochs", "purify_lr", "purify_noise")},
        "data_fraction": defender_share(0.05),
    }

    def fit(self, model: nn.Module, data: Split, ctx: FitContext) -> DeployedModel:
        """Resumable by stage (``ctx.work_dir``, :class:`core.train.Stages`): NC's optimisation of each group of
        classes, the purifier's identity pre-training and its training are saved at every epoch end; a stopped
        run skips what it finished and continues the stage it was in."""
        device = resolve_device(ctx.device)
        frozen_model = _frozen_copy(model, device)
        stages = Stages(ctx.state_path("nc"), ctx.fingerprint)
        result = neural_cleanse(frozen_model, data.images, model.spec["num_classes"], device=device, seed=ctx.seed,
                                log=ctx.log, schedule=self.nc_schedule, epochs=self.nc_epochs, lr=self.nc_lr,
                                init_cost=self.nc_init_cost, patience=self.nc_patience,
                                cost_multiplier=self.nc_cost_multiplier,
                                early_stop_patience=self.nc_early_stop_patience,
                                batch_size=self.batch_size, classes_per_pass=self.nc_classes_per_pass, stages=stages)
        self.detection = result.summary()
        trigger = result.triggers[result.target]
        ctx.log(f"NC: purifying with the inverted trigger of class {result.target} (mask L1 {trigger.norm:.1f})")
        cfg = BTIDBFConfig(batch_size=self.batch_size, generator_channels=self.generator_channels,
                           generator_blocks=self.generator_blocks, pretrain_epochs=self.pretrain_epochs,
                           purify_epochs=self.purify_epochs, purify_lr=self.purify_lr, purify_noise=self.purify_noise)
        stamp = _StampInNormalizedSpace(frozen_model.normalize, trigger.mask, trigger.pattern).to(device)
        unet = build_generator(cfg, ctx.seed, tag="nc-purifier")
        pretrain_generator(frozen_model, unet, data, cfg, seed=ctx.seed, amp=ctx.amp, log=ctx.log, stages=stages)
        train_purifier(frozen_model, unet, stamp, data, cfg, seed=ctx.seed, tag="nc", amp=ctx.amp, log=ctx.log,
                       stages=stages)
        unet.eval().requires_grad_(False)
        purifier = Purifier(unet, model.spec.get("mean"), model.spec.get("std"), cfg.purify_noise)
        return DeployedModel(frozen_model, purifier)
