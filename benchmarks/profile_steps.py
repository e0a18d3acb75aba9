"""Where the time of a training step goes: the real training loops (attack: ResNet-18; REFINE: UNet + frozen
ResNet-18) at the paper's sizes, under the PyTorch profiler, with the throughput of an unprofiled epoch beside it.

    python benchmarks/profile_steps.py                          # both loops, the current device
    python benchmarks/profile_steps.py --what refine --compile  # REFINE with torch.compile (after its warm-up)
    python benchmarks/profile_steps.py --device cpu --batches 4 --width 8 --unet-channels 8   # a quick CPU check

Prints, per loop: img/s of a plain epoch, then the profiler's top operators by self device time and by self
CPU time. Synthetic data resident on the device (the loops' own batching, augmentation and loss guard run).
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.data import Split  # noqa: E402
from core.defenses import REFINE  # noqa: E402
from core.models import UNet, build_classifier  # noqa: E402
from core.train import resolve_device, train_classifier  # noqa: E402


def timed(run, device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def report(name, run, n, device, rows):
    run()  # warm-up (and compilation, where asked)
    seconds = timed(run, device)
    print(f"\n== {name}: {n / seconds:,.0f} img/s ({n} images in {seconds:.2f} s, unprofiled)", flush=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
    table = prof.key_averages()
    if device.type == "cuda":
        print(table.table(sort_by="self_cuda_time_total", row_limit=rows))
    print(table.table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=["attack", "refine", "both"], default="both")
    p.add_argument("--batches", type=int, default=40, help="batches per profiled epoch")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--unet-channels", type=int, default=64)
    p.add_argument("--compile", action="store_true", help="REFINE: torch.compile T and F")
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; torch {torch.__version__}")
    quiet = lambda _m: None  # noqa: E731
    g = torch.Generator().manual_seed(0)
    if args.what in ("attack", "both"):
        n = 128 * args.batches
        train = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n,), generator=g), tuple(map(str, range(10))), "synthetic")
        model = build_classifier("ResNet18", "CIFAR10", 10, args.width)
        report("attack (ResNet-18, batch 128, crop+flip, SGD, bf16 on CUDA)",
               lambda: train_classifier(model, train, epochs=1, batch_size=128, device=device, log=quiet),
               n, device, args.rows)
    if args.what in ("refine", "both"):
        n = 256 * args.batches
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        defense = REFINE(UNet(args.unet_channels), build_classifier("ResNet18", "CIFAR10", 10, args.width), 10,
                         device=device)
        report(f"REFINE (UNet {args.unet_channels}, batch 256, SGD, bf16 on CUDA, compile {args.compile})",
               lambda: defense.train(images, epochs=1, batch_size=256, compile=args.compile, log=quiet),
               n, device, args.rows)


if __name__ == "__main__":
    main()
