"""Eager vs fast path (torch.compile + fused optimizer kernels), attack and REFINE, in one run: img/s and ratio.

    python benchmarks/speed_ratio.py                                  # paper sizes on the current device
    python benchmarks/speed_ratio.py --width 16 --unet-channels 16 --batches 6 --device cpu   # a CPU check

The ratio compares two paths measured back to back on the same machine, so it stays meaningful where
absolute numbers are noisy (a shared or throttled machine). Synthetic uint8 data resident on the device;
the code paths are attack.py's and refine.py's training loops and the defended model's inference. The
compile warm-up (one epoch on a few batches) is not timed.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.data import Split  # noqa: E402
from core.defenses import REFINE  # noqa: E402
from core.metrics import predict  # noqa: E402
from core.models import UNet, build_classifier  # noqa: E402
from core.train import resolve_device, train_classifier  # noqa: E402


def timed(fn, device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def attack_rates(data: Split, args, device, fast: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_classifier("ResNet18", "CIFAR10", 10, args.width)
    quiet = lambda _m: None  # noqa: E731
    run = dict(batch_size=args.attack_batch, device=device, amp=True, compile=fast, fused=fast, log=quiet,
               augment="flip")
    warm = Split(data.images[: 3 * args.attack_batch], data.labels[: 3 * args.attack_batch], data.classes, "warm")
    train_classifier(model, warm, epochs=1, **run)
    train = len(data) / timed(lambda: train_classifier(model, data, epochs=1, **run), device)
    net = torch.compile(model) if fast else model
    images = data.images.to(device)
    predict(net, images[:1024], 1024, device)
    infer = len(data) / timed(lambda: predict(net, images, 1024, device), device)
    return train, infer


def refine_rates(data: Split, args, device, fast: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    defense = REFINE(UNet(args.unet_channels), build_classifier("ResNet18", "CIFAR10", 10, args.width), 10,
                     device=device)
    quiet = lambda _m: None  # noqa: E731
    run = dict(batch_size=args.refine_batch, compile=fast, fused=fast, log=quiet)
    defense.train(data.images[: 3 * args.refine_batch], epochs=1, **run)
    train = len(data) / timed(lambda: defense.train(data.images, epochs=1, **run), device)
    model = defense.defended_model()
    net = torch.compile(model) if fast else model
    images = data.images.to(device)
    predict(net, images[:1024], 1024, device)
    infer = len(data) / timed(lambda: predict(net, images, 1024, device), device)
    return train, infer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64, help="ResNet-18 width (64 = the paper's)")
    p.add_argument("--unet-channels", type=int, default=64)
    p.add_argument("--attack-batch", type=int, default=128)
    p.add_argument("--refine-batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=40, help="batches of 256 images per timed epoch")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    n = args.batches * 256
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g), tuple(map(str, range(10))), "synthetic")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}, torch {torch.__version__}; ResNet-18 width {args.width}, UNet {args.unet_channels}, {n} images "
          f"per timed epoch")
    print(f"{'job':<8} {'measure':<16} {'eager img/s':>12} {'fast img/s':>12} {'fast/eager':>10}")
    for job, rates in (("attack", attack_rates), ("REFINE", refine_rates)):
        eager, fast = rates(data, args, device, False), rates(data, args, device, True)
        for label, e, f in (("training", eager[0], fast[0]), ("inference", eager[1], fast[1])):
            print(f"{job:<8} {label:<16} {e:>12,.0f} {f:>12,.0f} {f / e:>10.2f}")


if __name__ == "__main__":
    main()
