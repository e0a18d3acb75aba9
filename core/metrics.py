"""Benign accuracy (BA) and attack success rate (ASR), with exact counts."""
from __future__ import annotations

import time

import torch

from . import distributed
from .data import iterate_batches, memory_format
from .train import frozen


def default_eval_batch_size(device) -> int:
    """Evaluation batch for ``device``: large on a GPU; cache-sized on a CPU, where 128 ran about 1.7x faster
    than 1024 (width-16 ResNet-18, 2 cores)."""
    return 1024 if torch.device(device).type == "cuda" else 128


@torch.inference_mode()
def predict(model, images: torch.Tensor, batch_size: int | None = None, device="cpu") -> torch.Tensor:
    """Predicted labels (int64, N, on CPU) of ``model`` for uint8 or [0, 1]-float images N×C×H×W.

    ``batch_size`` None: :func:`default_eval_batch_size` of ``device``.
    """
    batch_size = batch_size or default_eval_batch_size(device)
    # each submodule's own mode is restored afterwards: a blanket model.train() would also switch a frozen
    # sub-model (REFINE's F) to training mode and let its BatchNorm statistics drift
    preds = []
    dummy = torch.zeros(len(images), dtype=torch.int64)
    with frozen(model):
        for x, _ in iterate_batches(images, dummy, batch_size, device):
            preds.append(model(x.contiguous(memory_format=memory_format(device))).argmax(1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)


def accuracy(model, images, labels, batch_size=None, device="cpu") -> dict:
    """``{'correct', 'total', 'acc'}`` with acc in percent; every sample counts (no dropped last batch). Under
    torchrun each rank predicts its shard and the exact counts are summed (core.distributed)."""
    part = distributed.shard(len(labels))
    correct = int((predict(model, images[part], batch_size, device) == labels[part].cpu()).sum())
    correct, = distributed.sum_counts(correct, device=device)
    total = len(labels)
    return {"correct": correct, "total": total, "acc": 100.0 * correct / max(total, 1)}


def ba_asr(model, benign_test, poisoned_test, batch_size=None, device="cpu") -> dict:
    """BA on the whole benign test set; ASR on the poisoned test set (labels = the target class).

    ``poisoned_test`` may be None (benign model): then only BA is reported.
    """
    ba = accuracy(model, benign_test.images, benign_test.labels, batch_size, device)
    result = {"BA": ba["acc"], "BA_correct": ba["correct"], "BA_total": ba["total"]}
    if poisoned_test is not None:
        asr = accuracy(model, poisoned_test.images, poisoned_test.labels, batch_size, device)
        result.update({"ASR": asr["acc"], "ASR_hits": asr["correct"], "ASR_total": asr["total"]})
    return result


def timed_ba_asr(model, benign_test, poisoned_test, batch_size=None, device="cpu") -> tuple[dict, dict]:
    """:func:`ba_asr` and how fast it ran, for the overhead table (the paper's Table 12): ``{'images',
    'seconds', 'images_per_second', 'seconds_per_10000'}`` over the benign and poisoned test images together.
    Counting each batch's predictions on the host waits for the device, so the time is the inference's own; one
    untimed batch first keeps one-off costs (allocation, kernel selection) out of it."""
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the warm-up draws no random numbers of the timed evaluation's
        predict(model, benign_test.images[:batch_size or default_eval_batch_size(device)], batch_size, device)
    started = time.perf_counter()
    metrics = ba_asr(model, benign_test, poisoned_test, batch_size, device)
    seconds = max(time.perf_counter() - started, 1e-9)
    images = metrics["BA_total"] + metrics.get("ASR_total", 0)
    return metrics, {"images": images, "seconds": round(seconds, 3),
                     "images_per_second": round(images / seconds, 1),
                     "seconds_per_10000": round(1e4 * seconds / max(images, 1), 3)}
