"""REFINE's output mapping M: a fixed permutation of the classes with no fixed point (a derangement)."""
from __future__ import annotations

import torch
import torch.nn as nn


def random_derangement(num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation π of range(num_classes) with π(j) != j for every j (num_classes >= 2)."""
    if num_classes < 2:
        raise ValueError("a derangement needs at least 2 classes")
    while True:  # rejection sampling: about e ≈ 2.7 draws on average
        perm = torch.randperm(num_classes, generator=generator)
        if not (perm == torch.arange(num_classes)).any():
            return perm


class LabelRemap(nn.Module):
    """Moves the score of original class j to position π(j): ``out[:, π(j)] = x[:, j]``.

    Works on logits or probabilities (softmax commutes with a permutation). ``permutation`` = π as a
    LongTensor K; the identity permutation gives the ablation "w/o HRF" (no remapping).
    """

    part_name = "derangement"  # as a part of a deployed defense (core.defenses.parts)

    def __init__(self, permutation: torch.Tensor):
        super().__init__()
        self.register_buffer("permutation", permutation.clone().long())
        self.register_buffer("inverse", torch.argsort(self.permutation))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores[:, self.inverse]  # out[:, k] = x[:, π⁻¹(k)]

    def part_spec(self) -> dict:
        return {"num_classes": len(self.permutation)}
