"""Training throughput of the classifier's loop in one process against N torchrun processes, in one run: img/s of
each and their ratio (core/distributed.py).

    python benchmarks/ddp_ratio.py --nproc 2 --device cpu              # gloo on this machine's cores
    python benchmarks/ddp_ratio.py --nproc 8 --width 64 --device cuda  # NCCL on 8 GPUs

Each measurement is a fresh ``torchrun --standalone --nproc_per_node N`` of this file in ``--worker`` mode (N = 1
for the single process: with one process torchrun leaves the process group out, so it is the plain path), which
trains one warm-up epoch and one timed epoch of synthetic uint8 data through core.train.train_classifier with the
same global batch. On the CPU each process gets cores/N threads, so the ratio shows the cost of the gradient
all-reduce and of smaller per-rank batches, not more compute.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from core import distributed
    from core.data import Split
    from core.models import build_classifier
    from core.train import resolve_device, train_classifier

    device = distributed.setup(resolve_device(args.device))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    data = Split(images, labels, [str(c) for c in range(10)], "synthetic")
    torch.manual_seed(0)
    model = build_classifier("ResNet18", "CIFAR10", 10, args.width)
    run = dict(batch_size=args.batch, device=device, amp=device.type == "cuda", log=lambda m: None, augment="flip",
               schedule="constant")
    train_classifier(model, Split(images[:3 * args.batch], labels[:3 * args.batch], data.classes, "warm"), epochs=1,
                     **run)
    if device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    start = time.perf_counter()
    train_classifier(model, data, epochs=1, **run)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if distributed.is_main():
        print("RESULT " + json.dumps({"processes": distributed.world(), "images_per_second": args.images / seconds}))


def measure(nproc: int, args) -> float:
    threads = max(1, (os.cpu_count() or 1) // nproc) if args.device == "cpu" else 1
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), __file__,
               "--worker", "--device", args.device, "--width", str(args.width), "--batch", str(args.batch),
               "--images", str(args.images)]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads),
                                                                       "GOMP_SPINCOUNT": "1000"})
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"the {nproc}-process run failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])["images_per_second"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=128, help="global batch size")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    one = measure(1, args)
    many = measure(args.nproc, args)
    print(f"1 process: {one:.0f} img/s; {args.nproc} processes: {many:.0f} img/s; ratio {many / one:.2f} "
          f"(ResNet-18 width {args.width}, global batch {args.batch}, {args.images} images, {args.device})")


if __name__ == "__main__":
    main()
