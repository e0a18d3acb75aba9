"""Training and evaluation throughput (images/s) of a classifier at the paper's batch size.

    python benchmarks/benchmark_attack.py                       # ResNet-18, width 64, batch 128
    python benchmarks/benchmark_attack.py --width 16 --device cpu

Synthetic uint8 data resident on the device, batched augmentation, channels-last and (on CUDA) bf16
autocast: exactly the code path of attack.py's training loop.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.data import Split  # noqa: E402
from core.metrics import predict  # noqa: E402
from core.models import build_classifier  # noqa: E402
from core.train import resolve_device, train_classifier  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ResNet18")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=0, help="images per timed epoch (default: 40 batches)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", type=int, default=1)
    args = p.parse_args()
    device = resolve_device(args.device)
    n = args.images or 40 * args.batch_size
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g), tuple(map(str, range(10))), "synthetic")
    model = build_classifier(args.model, "CIFAR10", 10, args.width)
    quiet = lambda _msg: None  # noqa: E731
    warm = Split(data.images[: 5 * args.batch_size], data.labels[: 5 * args.batch_size], data.classes, "warm-up")
    train_classifier(model, warm, epochs=1, batch_size=args.batch_size, device=device, amp=bool(args.amp), log=quiet)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    train_classifier(model, data, epochs=1, batch_size=args.batch_size, device=device, amp=bool(args.amp), log=quiet)
    sync()
    train_rate = n / (time.perf_counter() - t)
    images = data.images.to(device)
    predict(model, images[:1024], 1024, device)
    sync()
    t = time.perf_counter()
    predict(model, images, 1024, device)
    sync()
    eval_rate = n / (time.perf_counter() - t)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.model} width {args.width} on {name} ({torch.get_num_threads()} threads), batch {args.batch_size}, "
          f"amp {bool(args.amp) and device.type == 'cuda'}: training {train_rate:,.0f} img/s, evaluation {eval_rate:,.0f} img/s")


if __name__ == "__main__":
    main()
