"""What every poisoning attack shares. A concrete attack is one small file that declares its settings and
defines its trigger; the base does the rest:

* **registration** - ``@register_attack`` on the class; a new attack is one file in core/attacks/ (the
  package imports every module), and attack.py, the jobs and the tables find it in :data:`ATTACKS`;
* **settings** - per-attack options declared as :class:`core.settings.Setting` objects in ``settings``;
  ``attack.py`` generates its flags from them, the job checks them, the run's config records them;
* **trigger** - built from the seed (or files) by :meth:`Attack.build_trigger`, kept as the tensors named in
  ``trigger_names``, saved inside ``model.pth`` so that a defense rebuilds the poisoned test set from the
  saved tensors (:func:`core.attacks.restore_attack`), never by re-deriving them from the seed;
* **poisoning plan** - :meth:`Attack.plan`: *payload* indices (trigger + label -> target) and *cover*
  indices (trigger, true label kept), drawn from the seed;
* **training trigger vs test trigger** - :meth:`Attack.apply_train_trigger` (may vary per sample, e.g.
  Adaptive-Patch cycles through its patches) and :meth:`Attack.apply_trigger` (the one ASR is measured with);
* **per-batch hook** - :meth:`Attack.train_hook`, run on every training batch with each sample's role
  (PhysicalBA's physical transformations, BATT's trigger and benign rotations, WaNet's noise mode), before
  the training augmentation unless ``hook_after_augment`` (:meth:`Attack.hook_arguments` hands it to the
  training loop).

Triggers are applied once, to the uint8 images in memory (rounded as an image file would be), before the
per-batch hook and the training augmentation, as in BackdoorBox's poisoned data sets - except the triggers an
attack applies in its hook instead (``payload_in_hook``, ``cover_in_hook``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_save, atomic_write, safe_load  # weights-only loads
from ..checks import existing_file, integer, number
from ..data import Split, to_float
from ..errors import UserError
from ..registry import Registry
from ..seeding import generator
from ..settings import Setting

# Roles of the training samples, as passed to Attack.train_hook.
CLEAN, PAYLOAD, COVER = 0, 1, 2


ATTACKS = Registry("attack")
register_attack = ATTACKS.register  # the decorator every attack class wears

# The attack job's settings that every attack has (each attack adds its own: ``Attack.settings``).
POISONING = {
    "attack": Setting("BadNets", "the attack (Benign: a clean model); a name or alias of the registry", None,
                      "method"),  # checked against the registry by the job, once every attack has registered
    "y_target": Setting(0, "target label of the backdoor", integer(0), "method", aliases=("--tlabel",)),
    "poisoned_rate": Setting(None, "share of the training set poisoned (default: the attack's own: 10 %; LC 25 % "
                                   "of the target class; Adaptive 1 %)", number(0, 1, optional=True), "method",
                             aliases=("--poisoned_rate",)),
    "trigger": Setting(None, "trigger file (.pth tensor, or an image) for attacks that take one", existing_file(),
                       "method"),
}


@dataclass
class PoisonPlan:
    """Which training samples an attack touches: ``payload`` (relabelled to the target) and ``cover``
    (triggered, true label kept). Sorted int64 index tensors, disjoint."""

    payload: torch.Tensor
    cover: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def roles(self, n: int) -> torch.Tensor:
        """uint8 tensor N: CLEAN, PAYLOAD or COVER per training sample."""
        roles = torch.full((n,), CLEAN, dtype=torch.uint8)
        roles[self.payload] = PAYLOAD
        roles[self.cover] = COVER
        return roles

    def touched(self) -> torch.Tensor:
        """Payload then cover indices: the samples that carry a trigger, in the order triggers are assigned."""
        return torch.cat([self.payload, self.cover])


class Attack:
    """Base class. ``y_target``: target label; ``poisoned_rate``: the share of the training set relabelled
    (None: the attack's ``default_poisoned_rate``); ``seed``: the trigger and the poisoned subset are drawn
    from it; ``image_size``: side of the (square) images; ``trigger_path``: a trigger file for attacks that
    take one; ``trigger_tensors``: a saved trigger (from :meth:`trigger_tensors`) used instead of building one;
    ``settings``: the attack's own options (see ``settings``)."""

    name = "Attack"
    aliases: tuple[str, ...] = ()
    order = 100  # place in listings and tables (the paper's order)
    version = 1  # bumped whenever what the attack computes changes: runs of another version are not reused
    # A clean-label attack may need a model trained without a backdoor (LC: PGD against it): the registry name
    # of the attack whose latest run provides it, and the setting that names such a model file instead.
    reference_attack: str | None = None
    reference_setting: str | None = None
    # True (a class attribute, or a property of the settings): the attack's model starts from the reference
    # model's network weights instead of a fresh initialization (LC's lc_init, as the authors' code does)
    starts_from_reference = False
    poisons_data = True
    default_poisoned_rate = 0.1
    takes_trigger_file = False  # --trigger FILE means something to this attack
    settings: dict[str, Setting] = {}
    trigger_names: tuple[str, ...] = ()  # attributes holding the trigger tensors (float, CPU)

    def __init__(self, y_target: int = 0, poisoned_rate: float | None = None, seed: int = 0, image_size: int = 32,
                 trigger_path=None, trigger_tensors: dict | None = None, **settings):
        poisoned_rate = self.default_poisoned_rate if poisoned_rate is None else poisoned_rate
        if not 0.0 <= poisoned_rate <= 1.0:
            raise UserError(f"--poisoned-rate must be in [0, 1], got {poisoned_rate}")
        if trigger_path and not self.takes_trigger_file:
            raise UserError(f"{self.name} takes no trigger file (--trigger); its trigger is generated from --seed")
        unknown = set(settings) - set(self.settings)
        if unknown:
            raise UserError(f"{', '.join(sorted(unknown))} is not a setting of {self.name}"
                            + (f" (its settings: {', '.join(self.settings)})" if self.settings else ""))
        self.y_target = int(y_target)
        self.poisoned_rate = float(poisoned_rate)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.trigger_path = str(trigger_path) if trigger_path else None
        for key, setting in self.settings.items():
            value = settings.get(key)
            setattr(self, key, setting.default if value is None else value)
        if trigger_tensors is not None:
            self.load_trigger(trigger_tensors)
        else:
            self.build_trigger()

    # -- to be defined by each attack -------------------------------------------------------------
    def build_trigger(self) -> None:
        """Creates the trigger tensors named in ``trigger_names`` (from the seed, settings or files)."""

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """The test-time trigger: float images in [0, 1], N×C×H×W -> same shape and range."""
        raise NotImplementedError

    def apply_train_trigger(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """The trigger put on training sample number ``order`` (int64 N: rank in :meth:`PoisonPlan.touched`).
        The test trigger unless the attack varies it per sample."""
        return self.apply_trigger(x)

    def train_hook(self, x: torch.Tensor, roles: torch.Tensor, generator=None) -> torch.Tensor:
        """Per-batch hook on float training images (device-side; ``roles`` uint8 N); identity by default."""
        return x

    @property
    def has_train_hook(self) -> bool:
        """Whether the training loop must call :meth:`train_hook`: true for an attack that defines one (an attack
        may narrow it to the settings under which its hook changes anything, as BATT and WaNet do; it must stay
        true whenever payload or cover samples are triggered in the hook)."""
        return type(self).train_hook is not Attack.train_hook
    # payload samples are triggered per batch by train_hook instead of once in memory (their label still changes)
    payload_in_hook = False
    cover_in_hook = False  # cover samples are triggered per batch by train_hook instead of once in memory
    # train_hook runs on the augmented batch instead of before the augmentation: for a trigger the augmentation
    # must not alter (BATT's counter-clockwise rotation, which a horizontal flip would turn clockwise)
    hook_after_augment = False

    def hook_arguments(self, plan: PoisonPlan, n: int) -> dict:
        """The keyword arguments that hand this attack's per-batch hook to :func:`core.train.train_classifier`
        for a training set of ``n`` samples poisoned by ``plan``: the roles (uint8 n), the hook and whether it
        runs after the augmentation; none when the attack has no hook."""
        if not self.has_train_hook:
            return {}
        return {"roles": plan.roles(n), "batch_hook": self.train_hook, "hook_after_augment": self.hook_after_augment}

    def use_reference(self, model, cache_dir, device) -> None:
        """Receives the model of ``reference_attack`` (loaded weights-only), a folder for cached work and the
        device, before the training set is poisoned. Only attacks that declare ``reference_attack`` get it."""

    def prepare_poisoned(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """uint8 training images about to get the trigger (indices into the training set), before it is applied.
        Identity by default; Label-Consistent makes them hard to learn here."""
        return images

    # -- the plan ---------------------------------------------------------------------------------
    def candidate_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Training samples that may carry the payload (all; clean-label attacks restrict to the target class)."""
        return torch.arange(len(labels))

    def payload_count(self, labels: torch.Tensor) -> int:
        return int(round(self.poisoned_rate * len(labels)))

    def cover_count(self, labels: torch.Tensor) -> int:
        return 0

    def plan(self, labels: torch.Tensor) -> PoisonPlan:
        """The payload (``payload_count`` of the candidates) and cover samples (drawn from the rest), from the seed."""
        candidates = self.candidate_indices(labels)
        count = self.payload_count(labels)
        if count > len(candidates):
            raise UserError(f"poisoned rate {self.poisoned_rate} asks for {count} samples but only "
                            f"{len(candidates)} can be poisoned by {self.name}")
        g = generator(self.seed, "poisoned-indices")
        payload = candidates[torch.randperm(len(candidates), generator=g)[:count]].sort().values
        covers = self.cover_count(labels)
        rest = torch.ones(len(labels), dtype=torch.bool)
        rest[payload] = False
        rest = rest.nonzero().flatten()
        if covers > len(rest):
            raise UserError(f"{self.name} asks for {covers} cover samples but only {len(rest)} are left")
        g = generator(self.seed, "cover-indices")
        cover = rest[torch.randperm(len(rest), generator=g)[:covers]].sort().values
        return PoisonPlan(payload, cover)

    # -- shared machinery -------------------------------------------------------------------------
    def config(self) -> dict:
        """Everything needed to rebuild the attack (with :meth:`trigger_tensors`): recorded in config and model.pth."""
        return {"attack": self.name, "y_target": self.y_target, "poisoned_rate": self.poisoned_rate, "seed": self.seed,
                "image_size": self.image_size, "trigger_path": self.trigger_path,
                **{key: _plain(getattr(self, key)) for key in self.settings}}

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that define the trigger (float, CPU), by name: saved in model.pth and trigger.pth."""
        return {name: getattr(self, name).detach().cpu() for name in self.trigger_names}

    def load_trigger(self, tensors: dict) -> None:
        missing = [n for n in self.trigger_names if n not in tensors]
        if missing:
            raise UserError(f"the saved {self.name} trigger lacks {', '.join(missing)}; retrain the model with "
                            f"this version of attack.py")
        for name in self.trigger_names:
            setattr(self, name, tensors[name].float().cpu())

    def poison_uint8(self, images: torch.Tensor, order: torch.Tensor | None = None, batch_size: int = 4096):
        """Applies the test trigger (or, with ``order``, the training trigger) to uint8 images N×C×H×W,
        rounding back to uint8."""
        self._check_size(images)
        out = torch.empty_like(images)
        for s in range(0, len(images), batch_size):
            x = to_float(images[s:s + batch_size])
            poisoned = self.apply_trigger(x) if order is None else self.apply_train_trigger(x, order[s:s + batch_size])
            out[s:s + batch_size] = (poisoned * 255).round_().clamp_(0, 255).to(torch.uint8)
        return out

    def poison_train(self, train: Split) -> tuple[Split, PoisonPlan]:
        """Poisoned copy of the training split (payload relabelled, cover not) and the plan. Samples whose
        trigger comes in the per-batch hook (``payload_in_hook``, ``cover_in_hook``) keep their images here."""
        plan = self.plan(train.labels)
        images, labels = train.images.clone(), train.labels.clone()
        touched = plan.touched()
        in_memory = torch.cat([torch.full((len(plan.payload),), not self.payload_in_hook),
                               torch.full((len(plan.cover),), not self.cover_in_hook)])
        order = torch.arange(len(touched))[in_memory]  # rank in plan.touched(), as apply_train_trigger takes it
        touched = touched[in_memory]
        if len(touched):
            prepared = self.prepare_poisoned(images[touched], labels[touched], touched)
            images[touched] = self.poison_uint8(prepared, order=order)
        labels[plan.payload] = self.y_target
        cover = f" + {len(plan.cover)} cover samples" if len(plan.cover) else ""
        return Split(images, labels, train.classes,
                     train.source + f" + {len(plan.payload)} poisoned{cover} by {self.name}"), plan

    def poison_test(self, test: Split) -> Split:
        """Test images whose true class is not the target, with the test trigger, labelled ``y_target``."""
        keep = (test.labels != self.y_target).nonzero().flatten()
        images = self.poison_uint8(test.images[keep])
        labels = torch.full((len(keep),), self.y_target, dtype=torch.int64)
        return Split(images, labels, test.classes, test.source + f" (non-target, triggered by {self.name})")

    def save_trigger(self, folder) -> list[Path]:
        """Writes ``trigger.pth`` and a PNG of each image-like trigger tensor; returns the paths."""

        folder = Path(folder)
        tensors = self.trigger_tensors()
        if not tensors:
            return []
        atomic_save(tensors, folder / "trigger.pth")
        written = [folder / "trigger.pth"]
        for key, t in tensors.items():
            img = t.unsqueeze(0) if t.dim() == 2 else t
            if img.dim() == 3 and img.shape[0] in (1, 3) and img.shape[-1] == self.image_size:
                written.append(write_png(img, folder / f"trigger_{key}.png"))
        return written

    def save_preview(self, test: Split, path, per_class: int = 2, max_classes: int = 10) -> Path:
        """A PNG grid to see the trigger: ``per_class`` test images of the first ``max_classes`` classes, one
        column each; rows: clean, training trigger (first variant of each column), test trigger, and the
        test trigger's change amplified 5x (mid-grey = unchanged)."""
        picks = torch.cat([(test.labels == c).nonzero().flatten()[:per_class]
                           for c in range(min(max_classes, len(test.classes)))])
        clean = to_float(test.images[picks])
        train = to_float(self.poison_uint8(test.images[picks], order=torch.arange(len(picks))))
        poisoned = to_float(self.poison_uint8(test.images[picks]))
        diff = (0.5 + 5 * (poisoned - clean)).clamp(0, 1)
        rows = [torch.cat(list(row), dim=2) for row in (clean, train, poisoned, diff)]  # C×H×(W·n) each
        return write_png(torch.cat(rows, dim=1), path, upscale=max(1, 96 // self.image_size))

    def _check_size(self, images: torch.Tensor) -> None:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise UserError(f"{self.name} was built for {self.image_size}x{self.image_size} images, got "
                            f"{images.shape[-1]}x{images.shape[-2]}; build the attack with the dataset's image size")


def _plain(value):
    """A setting's value as YAML/JSON can hold it."""
    return list(value) if isinstance(value, tuple) else value


def write_png(image: torch.Tensor, path, upscale: int = 1) -> Path:
    """Writes a float C×H×W image in [0, 1] (C = 1 or 3) as a PNG, each pixel ``upscale``×``upscale``."""
    import cv2

    img = image.detach().cpu().float().clamp(0, 1)
    if upscale > 1:
        img = img.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
    array = (img * 255).round().byte().permute(1, 2, 0).numpy()
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array[:, :, ::-1]))
    if not ok:
        raise UserError(f"could not encode {path} as PNG")
    atomic_write(path, lambda f: f.write(encoded.tobytes()))
    return Path(path)


def load_trigger_image(path, size: int) -> torch.Tensor:
    """Reads a trigger from ``.pth``/``.pt`` (tensor, or dict with 'pattern') or an image file.

    Returns float in [0, 1], C×size×size (C = 1 or 3). uint8 tensors are divided by 255.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"trigger file {path} does not exist")
    if path.suffix in (".pth", ".pt"):

        blob = safe_load(path)
        t = blob.get("pattern") if isinstance(blob, dict) else blob
        if not isinstance(t, torch.Tensor):
            raise UserError(f"trigger file {path} holds no tensor (a tensor, or a dict with a 'pattern' tensor)")
        t = t.float() / 255 if t.dtype == torch.uint8 or t.max() > 1 else t.float()
        t = t.unsqueeze(0) if t.dim() == 2 else t
        if t.dim() == 3 and t.shape[-1] in (1, 3) and t.shape[0] not in (1, 3):
            t = t.permute(2, 0, 1)  # H×W×C -> C×H×W
    else:
        import cv2

        array = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if array is None:
            raise UserError(f"cannot read trigger image {path}")
        if array.shape[:2] != (size, size):
            array = cv2.resize(array, (size, size), interpolation=cv2.INTER_AREA)
        t = torch.from_numpy(np.ascontiguousarray(array[:, :, ::-1])).permute(2, 0, 1).float() / 255
    if t.shape[-2:] != (size, size):
        raise UserError(f"trigger {path} is {t.shape[-1]}x{t.shape[-2]}, the images are {size}x{size}")
    return t
