"""What every poisoning attack shares: choosing the poisoned subset, building the poisoned training
and test sets, and saving the trigger. A concrete attack only defines :meth:`Attack.apply_trigger`
(and, if it has one, :meth:`Attack.trigger_tensors`).

Triggers are applied once, to the uint8 images in memory (rounded like an image file would be), before
the training augmentation, as in BackdoorBox's poisoned data sets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import Split, to_float
from ..errors import UserError
from ..seeding import generator


class Attack:
    """Base class. ``y_target``: target label; ``poisoned_rate``: fraction of the training set poisoned."""

    name = "Attack"
    poisons_data = True

    def __init__(self, y_target: int = 0, poisoned_rate: float = 0.1, seed: int = 0, image_size: int = 32):
        if not 0.0 <= poisoned_rate <= 1.0:
            raise UserError(f"--poisoned-rate must be in [0, 1], got {poisoned_rate}")
        self.y_target = int(y_target)
        self.poisoned_rate = float(poisoned_rate)
        self.seed = int(seed)
        self.image_size = int(image_size)

    # -- to be defined by each attack -------------------------------------------------------------
    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """Poisons float images in [0, 1], N×C×H×W, returning the same shape and range."""
        raise NotImplementedError

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors that define the trigger (saved as ``trigger.pth``); images among them as ``*.png``."""
        return {}

    # -- shared machinery -------------------------------------------------------------------------
    def config(self) -> dict:
        return {"attack": self.name, "y_target": self.y_target, "poisoned_rate": self.poisoned_rate, "seed": self.seed,
                "trigger_path": str(self.trigger_path) if getattr(self, "trigger_path", None) else None}

    def poison_uint8(self, images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Applies the trigger to uint8 images N×C×H×W and rounds back to uint8."""
        self._check_size(images)
        out = torch.empty_like(images)
        for s in range(0, len(images), batch_size):
            poisoned = self.apply_trigger(to_float(images[s:s + batch_size]))
            out[s:s + batch_size] = (poisoned * 255).round_().clamp_(0, 255).to(torch.uint8)
        return out

    def candidate_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Training samples that may be poisoned (all; clean-label attacks restrict to the target class)."""
        return torch.arange(len(labels))

    def poisoned_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """Exactly ``round(poisoned_rate * N)`` indices (sorted), drawn from the seed."""
        candidates = self.candidate_indices(labels)
        count = int(round(self.poisoned_rate * len(labels)))
        if count > len(candidates):
            raise UserError(f"poisoned rate {self.poisoned_rate} asks for {count} samples but only "
                            f"{len(candidates)} can be poisoned by {self.name}")
        g = generator(self.seed, "poisoned-indices")
        return candidates[torch.randperm(len(candidates), generator=g)[:count]].sort().values

    def poison_train(self, train: Split) -> tuple[Split, torch.Tensor]:
        """Poisoned copy of the training split and the poisoned indices."""
        idx = self.poisoned_indices(train.labels)
        images, labels = train.images.clone(), train.labels.clone()
        if len(idx):
            images[idx] = self.poison_uint8(images[idx])
            labels[idx] = self.y_target
        return Split(images, labels, train.classes, train.source + f" + {len(idx)} poisoned by {self.name}"), idx

    def poison_test(self, test: Split) -> Split:
        """Test images whose true class is not the target, with the trigger, labelled ``y_target``."""
        keep = (test.labels != self.y_target).nonzero().flatten()
        images = self.poison_uint8(test.images[keep])
        labels = torch.full((len(keep),), self.y_target, dtype=torch.int64)
        return Split(images, labels, test.classes, test.source + f" (non-target, triggered by {self.name})")

    def save_trigger(self, folder) -> list[Path]:
        """Writes ``trigger.pth`` and a PNG of each image-like trigger tensor; returns the paths."""
        from ..checkpoint import atomic_save
        import cv2

        folder = Path(folder)
        tensors = self.trigger_tensors()
        if not tensors:
            return []
        atomic_save({k: v.cpu() for k, v in tensors.items()}, folder / "trigger.pth")
        written = [folder / "trigger.pth"]
        for key, t in tensors.items():
            img = t.float()
            img = img / 255 if t.dtype == torch.uint8 else img
            if img.dim() == 2:
                img = img.unsqueeze(0)
            if img.dim() == 3 and img.shape[0] in (1, 3):
                array = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                path = folder / f"trigger_{key}.png"
                cv2.imwrite(str(path), np.ascontiguousarray(array[:, :, ::-1]))
                written.append(path)
        return written

    def _check_size(self, images: torch.Tensor) -> None:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise UserError(f"{self.name} was built for {self.image_size}x{self.image_size} images, got "
                            f"{images.shape[-1]}x{images.shape[-2]}; build the attack with the dataset's image size")


def load_trigger_image(path, size: int) -> torch.Tensor:
    """Reads a trigger from ``.pth``/``.pt`` (tensor, or dict with 'pattern') or an image file.

    Returns float in [0, 1], C×size×size (C = 1 or 3). uint8 tensors are divided by 255.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"trigger file {path} does not exist")
    if path.suffix in (".pth", ".pt"):
        from ..checkpoint import safe_load  # weights-only, and a UserError for pickled code or a damaged file

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
