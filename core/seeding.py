"""Independent random streams from one user seed.

Every random choice (poisoned subset, trigger, data subset, shuffling, augmentation, label mapping)
gets its own stream, derived from the seed and a purpose tag. Reusing the bare seed everywhere makes
streams collide: with seed 0, the poisoned indices were exactly the first samples of epoch 0's shuffle.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *tags) -> int:
    """A 63-bit seed that depends on ``seed`` and the tags (stable across runs and platforms)."""
    text = "/".join(str(t) for t in (seed, *tags))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *tags, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *tags))
