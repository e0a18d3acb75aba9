"""Data-parallel training under ``torchrun`` (PyTorch's own launcher): ``torchrun --nproc_per_node N attack.py ...``.

A plain ``python attack.py ...`` is one process and nothing here changes what it computes (every function is the
identity or a no-op with one process). Under torchrun (``WORLD_SIZE`` > 1 in the environment):

* :func:`setup` joins the process group when a job resolves its device: NCCL on GPUs (rank r on
  ``cuda:LOCAL_RANK``), gloo on CPUs;
* the one training loop (:func:`core.train.fit`) keeps the single-process batch order - the same seeded
  permutation and the same global batches - and gives each rank its slice of every global batch
  (:func:`batch_slice`: the global batch size is unchanged; a batch of B samples splits as evenly as B allows,
  the first ranks taking one sample more when N does not divide B); after each backward pass the gradients are
  summed over the ranks weighted by their slice sizes (:func:`average_gradients`, one all-reduce per step), so a
  step applies the gradient of the global batch's mean loss;
* BatchNorm keeps per-rank batch statistics - what the authors' multi-GPU code gets from ``nn.DataParallel``,
  and the only kind gloo supports (SyncBatchNorm is GPU-only) - and rank 0's running statistics are given to
  every rank after each epoch (:func:`broadcast_buffers`), before evaluation and saving;
* the augmentation's and the attack hook's random streams are per rank (derived from the seed and the rank), so
  a run is reproducible for a given N, and N is part of the run's settings (another N is another run folder);
* evaluation is sharded and its exact counts summed over the ranks (:func:`shard`, :func:`sum_counts`);
* only rank 0 writes (:func:`is_main`: checkpoints, logs, metrics, tables; every write goes through
  :func:`core.checkpoint.atomic_write`), and the other ranks print nothing. A run whose rank dies resumes
  from its last saved epoch when the same command is run again.

Why not ``nn.parallel.DistributedDataParallel``'s wrapper: the toolkit's losses call a trained module more than
once per step (the adaptive attack runs F on x and on T(x); BTI-DBF's phases), which DDP's reducer refuses;
the explicit all-reduce after backward computes the same average for every loop of the toolkit.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UserError


def world() -> int:
    """Number of processes of this run: ``WORLD_SIZE`` under torchrun, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0) if world() > 1 else 0


def is_main() -> bool:
    """Rank 0 (the only one that writes), or the single process."""
    return rank() == 0


def active() -> bool:
    """A process group of several ranks is running."""
    return world() > 1 and dist.is_available() and dist.is_initialized()


def setup(device: torch.device) -> torch.device:
    """Joins the process group under torchrun (once per process) and returns the device of this rank:
    ``cuda:LOCAL_RANK`` for a CUDA device, the CPU otherwise. With one process: ``device`` unchanged."""
    if world() == 1:
        return device
    if device.type == "cuda":
        if device.index not in (None, int(os.environ.get("LOCAL_RANK", 0))):
            raise UserError(f"--device {device}: under torchrun each rank takes cuda:LOCAL_RANK; pass --device cuda "
                            f"(or auto)")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"--device {device}: torchrun runs on CUDA (NCCL) or on the CPU (gloo)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
        atexit.register(_leave)
        if not is_main():  # one copy of every message: rank 0's
            sys.stdout = open(os.devnull, "w")
    return device


def _leave() -> None:
    """Leaves the process group at exit (a process that ends inside it aborts)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. a download, a cache it writes); the others run it after rank 0 is done
    and find its result."""
    if active() and not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if active() and is_main():
            dist.barrier()


def batch_slice(n: int) -> slice:
    """This rank's rows of a global batch of ``n`` samples: contiguous, sizes differing by at most one."""
    if not active():
        return slice(0, n)
    size, r = world(), rank()
    base, extra = divmod(n, size)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def shard(n: int) -> slice:
    """This rank's share of ``n`` items to evaluate (see :func:`batch_slice`)."""
    return batch_slice(n)


def sum_counts(*counts: int, device="cpu") -> list[int]:
    """The integers summed over the ranks (exact: int64)."""
    if not active():
        return list(counts)
    t = torch.tensor(counts, dtype=torch.int64, device=_comm_device(device))
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def sum_tensors(tensors: dict, device="cpu") -> dict:
    """Float scalars (e.g. an epoch's summed losses) summed over the ranks."""
    if not active() or not tensors:
        return tensors
    keys = list(tensors)
    t = torch.stack([torch.as_tensor(tensors[k], dtype=torch.float64).to(_comm_device(device)) for k in keys])
    dist.all_reduce(t)
    return dict(zip(keys, t.unbind()))


def _comm_device(device) -> torch.device:
    """NCCL reduces CUDA tensors, gloo CPU ones."""
    return torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(parameters, weight: int) -> None:
    """Replaces each parameter's gradient by the sum over the ranks of ``weight`` × gradient, divided by the
    summed weights (``weight``: this rank's samples in the step): the gradient of the global batch's mean loss.
    One all-reduce of one flat buffer per step, and no wait for the device. A parameter without a gradient keeps
    none (the optimizer skips it, as in one process): every rank runs the same loss, so the same parameters
    get gradients on every rank."""
    if not active():
        return
    params = [p for p in parameters if p.requires_grad and p.grad is not None]
    if not params:
        return
    device = params[0].device
    flat = torch.cat([p.grad.detach().flatten().float() * weight for p in params]
                     + [torch.full((1,), float(weight), device=device)])
    comm = _comm_device(device)
    flat = flat.to(comm)
    dist.all_reduce(flat)
    flat = flat.to(device)
    total, offset = flat[-1], 0
    for p in params:
        n = p.grad.numel()
        p.grad = (flat[offset:offset + n] / total).view_as(p.grad).to(p.grad.dtype)
        offset += n


def broadcast_module(module: torch.nn.Module, buffers_only: bool = False) -> None:
    """Rank 0's parameters (unless ``buffers_only``) and buffers (BatchNorm's running statistics) on every rank."""
    if not active():
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for t in tensors:
        comm = _comm_device(t.device)
        data = t.detach().to(comm)
        dist.broadcast(data, src=0)
        with torch.no_grad():
            t.copy_(data.to(t.device))


def broadcast_buffers(*modules: torch.nn.Module) -> None:
    for module in modules:
        broadcast_module(module, buffers_only=True)


def any_rank(flag: bool, device="cpu") -> bool:
    """True when ``flag`` is true on at least one rank (e.g. a diverged loss), so that every rank stops."""
    if not active():
        return flag
    return sum_counts(int(flag), device=device)[0] > 0


def describe() -> str:
    """The line a run's log carries about its processes."""
    if not active():
        return "one process"
    return f"torchrun: {world()} processes ({dist.get_backend()}), this log from rank 0"
