"""Tiny synthetic data for fast, deterministic tests (no real data set needed)."""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.data import Split  # noqa: E402  (importing core first sets its CPU flags before threads start)

torch.set_num_threads(2)


def make_synthetic(n: int, num_classes: int = 4, size: int = 32, seed: int = 0) -> Split:
    """Each class is a colour tint plus noise: learnable in a few epochs by a narrow network."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(123)) * 0.6 + 0.2
    labels = torch.arange(n) % num_classes
    images = colours[labels] + 0.04 * torch.randn(n, 3, size, size, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return Split(images, labels, tuple(f"c{i}" for i in range(num_classes)), "synthetic")


@pytest.fixture
def synthetic():
    return make_synthetic


@pytest.fixture(autouse=True, scope="session")
def checkout_stays_clean():
    """Tests write under tmp_path only: after the session, no new path may exist under the checkout's
    run-output folders (attack/, refine_res/, defense_res/)."""
    root = Path(__file__).resolve().parent.parent

    def outputs():
        return {str(p) for name in ("attack", "refine_res", "defense_res") for p in (root / name).rglob("*")}

    before = outputs()
    yield
    new = sorted(outputs() - before)
    assert not new, f"tests wrote into the checkout: {new[:5]}"


def seeds(*default: int) -> list[int]:
    """Seeds for a seed-sensitive test: ``default``, or those in $TEST_SEEDS ("0-3" or "0,1,2,3") to sweep more."""
    spec = os.environ.get("TEST_SEEDS", "").strip()
    if not spec:
        return list(default)
    if "-" in spec:
        lo, hi = spec.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in spec.split(",")]


def write_tree(root: Path, per_class: int = 3, size: int = 32, classes: int = 10) -> None:
    """A tiny image-folder CIFAR10 (random pixels, PNG) under ``root``: ``root/CIFAR10/{train,test}/class<c>/``."""
    import cv2

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / "CIFAR10" / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
                cv2.imwrite(str(folder / f"{i}.png"), img)
