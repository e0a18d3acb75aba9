"""REFINE training throughput and defended-model inference throughput (images/s).

    python benchmarks/benchmark_refine.py                       # paper sizes: UNet 64, ResNet-18, batch 256
    python benchmarks/benchmark_refine.py --unet-channels 16 --width 16 --batch-size 128

Synthetic data resident on the device; the code path is refine.py's (batched augmentation, frozen F,
CE + SupCon, channels-last, bf16 autocast on CUDA).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.defenses import REFINE  # noqa: E402
from core.metrics import predict  # noqa: E402
from core.models import UNet, build_classifier  # noqa: E402
from core.train import resolve_device  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unet-channels", type=int, default=64)
    p.add_argument("--width", type=int, default=64, help="ResNet-18 width of the frozen model")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", type=int, default=1)
    args = p.parse_args()
    device = resolve_device(args.device)
    n = args.batches * args.batch_size
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = build_classifier("ResNet18", "CIFAR10", 10, args.width)
    defense = REFINE(UNet(args.unet_channels), model, 10, device=device, amp=bool(args.amp))
    quiet = lambda _m: None  # noqa: E731
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    defense.train(images[: 3 * args.batch_size], epochs=1, batch_size=args.batch_size, log=quiet)  # warm-up
    sync()
    t = time.perf_counter()
    defense.train(images, epochs=1, batch_size=args.batch_size, log=quiet)
    sync()
    train_rate = n / (time.perf_counter() - t)
    defended = defense.defended_model()
    on_device = images.to(device)
    predict(defended, on_device[:512], 512, device)
    sync()
    t = time.perf_counter()
    predict(defended, on_device, 1024, device)
    sync()
    infer_rate = n / (time.perf_counter() - t)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"REFINE on {name}: UNet {args.unet_channels}, ResNet-18 width {args.width}, batch {args.batch_size}, "
          f"amp {bool(args.amp) and device.type == 'cuda'}: training {train_rate:,.0f} img/s, "
          f"defended-model inference {infer_rate:,.0f} img/s")


if __name__ == "__main__":
    main()
