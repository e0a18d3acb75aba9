"""Data sets as in-memory uint8 tensors, and batching on the training device.

A data set is a pair ``(images, labels)``: ``images`` is a uint8 tensor N×C×H×W, ``labels`` an int64
tensor N. Images are converted to float in [0, 1] only per batch, on the device that trains, so that
the whole of CIFAR-10 (180 MB as uint8) can live on a GPU and no per-sample Python runs in the loop.

Sources understood by :func:`load_dataset`:

* an image-folder tree ``<root>/<DATASET>/{train,test}/<class>/*.{png,jpg}`` (the official REFINE layout);
* the same tree packed in a ``.tar.gz`` (e.g. the embedded sample ``data/cifar10_sample.tar.gz``);
* torchvision's ``cifar-10-batches-py`` folder (CIFAR-10 only; what ``--download`` fetches, see core/download.py).

How to get each data set: docs/data.md.
"""
from __future__ import annotations

import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_save
from .errors import UserError
from .checks import choice, integer
from .seeding import generator
from .settings import Setting

DATASETS = {
    # name: (number of classes, image side)
    "CIFAR10": (10, 32),
    "ImageNet50": (50, 224),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# A real 10,000/2,000 CIFAR-10 sample committed with the code, so the mini preset runs offline.
EMBEDDED_SAMPLE = Path(__file__).resolve().parent.parent / "data" / "cifar10_sample.tar.gz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

# Which data a run uses (its training-set size is the attack's train_size, or the defense's data_fraction).
DATA = {
    "dataset": Setting("CIFAR10", "data set", choice(DATASETS), "data"),
    "test_size": Setting(None, "class-balanced test subset (default: the whole test split)",
                         integer(1, optional=True), "data"),
}


@dataclass
class Split:
    """One split held in memory: uint8 images N×C×H×W and int64 labels N."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str  # human-readable description of where the data came from

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "Split":
        return Split(self.images[indices], self.labels[indices], self.classes, self.source)


def dataset_info(name: str) -> tuple[int, int]:
    """(num_classes, image_size) of a known data set, or a UserError naming the known ones."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _decode(data: bytes, path: str) -> np.ndarray:
    import cv2  # imported here so that importing core stays cheap

    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    except cv2.error:  # OpenCV asserts on some damaged files instead of returning None
        img = None
    if img is None:
        raise UserError(f"could not decode image {path}; remove or replace the file")
    return img[:, :, ::-1]  # BGR -> RGB


def _stack(images: list[np.ndarray], labels: list[int], classes, size: int, where: str):
    bad = next((i for i, im in enumerate(images) if im.shape[:2] != (size, size)), None)
    if bad is not None:
        raise UserError(
            f"images in {where} are {images[bad].shape[1]}x{images[bad].shape[0]} but this dataset expects "
            f"{size}x{size}; resize them first (ImageNet50 expects pre-resized 224x224 images)"
        )
    array = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return torch.from_numpy(array), torch.tensor(labels, dtype=torch.int64), tuple(classes)


def _read_folder_tree(split_dir: Path, size: int):
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((split_dir / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_decode(f.read_bytes(), str(f)))
                labels.append(label)
    if not images:
        raise UserError(f"no images found under {split_dir}/<class>/; check the data layout")
    return _stack(images, labels, classes, size, str(split_dir))


def _read_tarball(archive: Path, dataset: str, split: str, size: int):
    """Reads ``.../<dataset>/<split>/<class>/<file>`` members of an image-folder tarball; also returns the class
    names of the other split (None when the archive has none), to check that both agree."""
    found: dict[str, list[tuple[str, bytes]]] = {}
    other: set[str] = set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or len(parts) < 4 or parts[-4] != dataset:
                    continue
                if parts[-3] != split:
                    other.add(parts[-2])
                    continue
                if Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    found.setdefault(parts[-2], []).append((member.name, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"{archive} is not a readable .tar.gz of images ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'truncated'}); fetch or pack it again") from None
    if not found:
        raise UserError(f"{archive} holds no {dataset}/{split}/<class>/ images")
    classes = sorted(found)
    images, labels = [], []
    for label, name in enumerate(classes):
        for path, data in sorted(found[name]):
            images.append(_decode(data, path))
            labels.append(label)
    return (*_stack(images, labels, classes, size, str(archive)), sorted(other) or None)


# What a CIFAR-10 batch pickle may name: numpy arrays and their dtypes. Anything else - a __reduce__ payload that
# would run code - is refused: data files are as untrusted as checkpoints.
_CIFAR_PICKLE_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                         for n in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _Forbidden(pickle.UnpicklingError):
    """A pickle names a global that a CIFAR-10 batch never holds."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _Forbidden(f"it names {module}.{name}")


def _read_cifar_batch(path: Path) -> dict:
    """One batch file of torchvision's cifar-10-batches-py, read with :class:`_CifarUnpickler`."""
    if not path.is_file():
        raise UserError(f"{path} is missing: {path.parent} is not a complete cifar-10-batches-py folder "
                        f"(--download fetches one)")
    try:
        with open(path, "rb") as fh:
            entry = _CifarUnpickler(fh, encoding="latin1").load()
    except _Forbidden as exc:
        raise UserError(f"{path} is not a CIFAR-10 batch ({exc}); refused: data files are not allowed to run "
                        f"code") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as exc:
        raise UserError(f"{path} is truncated or corrupt ({type(exc).__name__}); fetch it again") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("data"), np.ndarray) \
            or not isinstance(entry.get("labels"), list) or entry["data"].size != 3 * 32 * 32 * len(entry["labels"]):
        raise UserError(f"{path} is not a CIFAR-10 batch (a dict of 'data': N 32x32 RGB images and N 'labels')")
    return entry


def _read_cifar_batches(folder: Path, split: str):
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    arrays, labels = [], []
    for name in files:
        entry = _read_cifar_batch(folder / name)
        arrays.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry["labels"])
    return torch.from_numpy(np.concatenate(arrays)), torch.tensor(labels, dtype=torch.int64), CIFAR10_CLASSES


def _cache_path(root: Path, dataset: str, split: str) -> Path:
    return root / f".cache_{dataset}_{split}.pt"


def _write_cache(cache: Path, blob: dict) -> None:
    try:
        atomic_save(blob, cache)
    except OSError:
        pass  # read-only data folder: no cache, still correct


def _read_cache(cache: Path):
    """The decoded images of a folder tree saved by an earlier run, or None (absent, truncated, foreign):
    a cache that cannot be read is rebuilt from the images, never trusted or fatal."""
    if not cache.is_file():
        return None
    try:
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        return blob["images"], blob["labels"], tuple(blob["classes"])
    except Exception:  # noqa: BLE001 - any unreadable cache is just rebuilt
        return None


class DataNotFound(UserError):
    """No data set at the data root (where the mini presets may fall back to the embedded sample)."""


def find_source(dataset: str, data_root: str | os.PathLike) -> tuple[str, Path]:
    """Locates a data set. Returns (kind, path) with kind in {'folder', 'tarball', 'cifar-batches'}."""
    root = Path(data_root)
    if root.is_file():
        if root.name.endswith((".tar.gz", ".tgz", ".tar")):
            return "tarball", root
        raise UserError(f"--data-root {root} is a file but not a .tar.gz/.tgz/.tar archive; pass the folder that "
                        f"holds the data or the archive")
    for candidate in (root / dataset, root):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return "folder", candidate
    if dataset == "CIFAR10":
        for candidate in (root / "cifar-10-batches-py", root):
            if (candidate / "test_batch").is_file():
                return "cifar-batches", candidate
    how = ("pass --download to fetch CIFAR-10 there, " if dataset == "CIFAR10"
           else "see docs/data.md for how to prepare ImageNet-50, ")
    raise DataNotFound(
        f"no {dataset} data found under {root}: {how}put an image-folder tree at {root}/{dataset}/train/<class>/ "
        f"and {root}/{dataset}/test/<class>/, or pass --data-root PATH"
    )


def _embedded_allowed(dataset: str, allow_embedded: bool) -> bool:
    return allow_embedded and dataset == "CIFAR10" and EMBEDDED_SAMPLE.is_file()


def will_use_embedded_sample(dataset: str, data_root, allow_embedded: bool) -> bool:
    """True when :func:`load_split` would fall back to the embedded sample (nothing is read but file names)."""
    if not _embedded_allowed(dataset, allow_embedded):
        return False
    try:
        find_source(dataset, data_root)
    except DataNotFound:
        return True
    return False


def load_split(dataset: str, split: str, data_root: str | os.PathLike, allow_embedded: bool = False,
               deferred_writes: list | None = None) -> Split:
    """Loads one split (``'train'`` or ``'test'``) of ``dataset`` into memory as uint8 tensors.

    With ``allow_embedded`` the CIFAR-10 sample shipped in ``data/`` is used when no full copy is found.
    Decoded folder trees are cached next to the data (``.cache_<dataset>_<split>.pt``) so the next run
    starts in a second. Given ``deferred_writes`` (a list), that cache write is appended to it as a callable
    instead of done now: a job calls it once every check has passed, so a refused run writes nothing anywhere.
    """
    _, size = dataset_info(dataset)
    try:
        kind, path = find_source(dataset, data_root)
    except DataNotFound:
        if not _embedded_allowed(dataset, allow_embedded):
            raise
        kind, path = "tarball", EMBEDDED_SAMPLE
    other_classes = write_cache = None
    if kind == "folder":
        other_dir = path / ("test" if split == "train" else "train")
        if other_dir.is_dir():
            other_classes = sorted(d.name for d in other_dir.iterdir() if d.is_dir())
        cache = _cache_path(path, dataset, split)
        cached = _read_cache(cache)
        if cached is not None:
            images, labels, classes = cached
        else:
            images, labels, classes = _read_folder_tree(path / split, size)
            write_cache = partial(_write_cache, cache, {"images": images, "labels": labels, "classes": list(classes)})
    elif kind == "tarball":
        images, labels, classes, other_classes = _read_tarball(path, dataset, split, size)
    else:
        images, labels, classes = _read_cifar_batches(path, split)
    if other_classes is not None and list(other_classes) != list(classes):
        # labels are positions in the sorted class list: splits with other classes would disagree on every label
        missing = sorted(set(other_classes) - set(classes))
        extra = sorted(set(classes) - set(other_classes))
        raise UserError(f"the {split} split of {path} and the other split have different classes (missing in "
                        f"{split}: {', '.join(missing) or 'none'}; only in {split}: {', '.join(extra) or 'none'}); "
                        f"both splits need the same <class> folders")
    if write_cache is not None:  # only a split that passed every check is cached
        if deferred_writes is None:
            write_cache()
        else:
            deferred_writes.append(write_cache)
    source = f"{dataset} {split} from {path}"
    if path == EMBEDDED_SAMPLE:
        source += " (embedded CIFAR-10 sample, not the full data set)"
    return Split(images, labels, classes, f"{source}: {len(labels)} images")


def evaluation_subset(split: Split, size: int) -> Split:
    """The class-balanced ``size``-image subset of a test split that every run evaluates on.

    Independent of the run's seed, so that the attack's BA/ASR and the defense's "no defense" line are
    measured on the same images.
    """
    return split.subset(seeded_subset(len(split), size, 0, split.labels))


def seeded_subset(n: int, size: int, seed: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of ``size`` of ``n`` items, drawn from ``seed``; balanced per class when labels are given."""
    if size >= n:
        return torch.arange(n)
    g = generator(seed, "subset", n, size)
    if labels is None:
        return torch.randperm(n, generator=g)[:size].sort().values
    classes = labels.unique()
    per_class = size // len(classes)
    picks = []
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks).sort().values


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×C×H×W -> float32 in [0, 1] (no-op for float input)."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def memory_format(device) -> torch.memory_format:
    """channels-last on CUDA (faster convolutions); the default layout on the CPU, where oneDNN's
    channels-last weight-gradient kernels can deadlock for narrow layers (seen with torch 2.13)."""
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def iterate_batches(images, labels, batch_size, device, shuffle=False, generator=None, drop_last=False, extra=None,
                    part=None):
    """Yields ``(x, y)`` with x float in [0, 1] on ``device``. Every sample is used unless ``drop_last``.

    ``images`` may already live on ``device`` (then nothing is copied but the batch slice). ``extra``: a
    per-sample tensor (e.g. attack roles) batched alongside; then ``(x, y, extra)`` is yielded. ``part(n)``: the
    slice of each batch of n samples to yield (under torchrun, this rank's share: core.distributed.batch_slice).
    """
    n = len(labels)
    order = torch.randperm(n, generator=generator).to(images.device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
        if part is not None:
            idx = torch.arange(start, min(start + batch_size, n))[part(min(batch_size, n - start))] \
                if order is None else idx[part(len(idx))]
        batch = (to_float(images[idx].to(device, non_blocking=True)), labels[idx].to(device, non_blocking=True))
        yield batch if extra is None else (*batch, extra[idx].to(device, non_blocking=True))
