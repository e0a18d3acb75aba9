"""Losses of REFINE (Eq. 5–7 of the paper)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07, views: int = 1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020), "L_out" form.

    features: N×D (any scale; L2-normalised here). labels: N ints. ``views``: how many copies of each sample
    enter the loss - 1 (one view per sample) or 2 (the authors' REFINE code passes each transformed image
    twice, as two identical "views", so every sample is also its own positive). For each anchor i with at
    least one positive p (same label, p != i): -1/|P(i)| · Σ_p log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) ),
    averaged over those anchors; 0 (with a graph) when no anchor has a positive. No host synchronisation.
    """
    z = F.normalize(features.flatten(1).float(), dim=1)
    if views > 1:
        z, labels = z.repeat(views, 1), labels.repeat(views)
    logits = z @ z.t() / temperature
    n = len(labels)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # a ≠ i in the denominator
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    has_pos = count > 0
    per_anchor = log_prob.masked_fill(~positives, 0.0).sum(1) / count.clamp(min=1)
    # mean over anchors with a positive, without asking the device whether there is one (a sync per step)
    return -(per_anchor * has_pos).sum() / has_pos.sum().clamp(min=1)


LOSSES = ("bce", "ce", "distill")


def remapped_loss(remapped_logits: torch.Tensor, pseudo_labels: torch.Tensor, kind: str = "ce",
                  teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Classification term between the remapped prediction M(F(T(x))) and the pseudo-labels.

    ``ce``: cross-entropy -log M(softmax F(T(x)))[ȳ] (the paper's Eq. 6). ``bce``: binary cross-entropy
    between the remapped probability vector and the one-hot pseudo-label, averaged over all N×K entries
    (what the authors' code computes). ``distill`` (ours): cross-entropy -Σ_k softmax(F(x))_k · log
    M(softmax F(T(x)))_k against F's soft prediction ``teacher_logits`` (N×K, same label space as the
    pseudo-labels), which tells T how F ranks every class, not only the top one.
    """
    if kind == "ce":
        return F.cross_entropy(remapped_logits.float(), pseudo_labels)
    if kind == "bce":
        probs = remapped_logits.float().softmax(1)
        target = F.one_hot(pseudo_labels, probs.shape[1]).float()
        # nn.BCELoss's value (each log clamped at -100) written out: F.binary_cross_entropy raises on NaN inputs,
        # where a diverging run must yield a NaN loss for the training loop's guard to stop it with one line
        log_p, log_not_p = probs.log().clamp(min=-100), (1 - probs).log().clamp(min=-100)
        return -(target * log_p + (1 - target) * log_not_p).mean()
    if kind == "distill":
        if teacher_logits is None:
            raise ValueError("loss 'distill' needs the teacher's logits F(x)")
        soft_targets = teacher_logits.float().softmax(1)
        return -(soft_targets * remapped_logits.float().log_softmax(1)).sum(1).mean()
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
