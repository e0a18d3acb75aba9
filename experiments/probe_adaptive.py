"""Which Adaptive-Patch triggers does a trained model respond to? Share of test images (true class not the target)
classified as the target: clean, with the test trigger (patches 1 and 2 at full opacity), and with each patch alone
at its training opacity and at full opacity. A diagnostic for models whose ASR stays low.

    python experiments/probe_adaptive.py attack/CIFAR10/ResNet18/Adaptive/latest/model.pth [--images 3000]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.attacks import restore_attack  # noqa: E402
from core.checkpoint import load_classifier  # noqa: E402
from core.data import load_split, to_float  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data-root", default="data")
    p.add_argument("--images", type=int, default=3000, help="test images probed (not of the target class)")
    args = p.parse_args()
    model, meta = load_classifier(args.model)
    model.eval()
    attack = restore_attack(meta["attack"], meta.get("trigger"))
    test = load_split(meta.get("dataset", "CIFAR10"), "test", args.data_root)
    x = to_float(test.images[test.labels != attack.y_target][:args.images])

    def target_rate(images):
        with torch.inference_mode():
            pred = torch.cat([model(images[i:i + 500]).argmax(1) for i in range(0, len(images), 500)])
        return f"{(pred == attack.y_target).float().mean().item() * 100:.2f} %"

    print(f"{len(x)} test images: clean {target_rate(x)}, test trigger {target_rate(attack.apply_trigger(x))}")
    for k, opacity in enumerate(attack.patch_opacity):
        which = torch.full((len(x),), k, dtype=torch.long)
        as_trained = attack.apply_train_trigger(x, which)  # patch `which % 4` at its training opacity
        opaque = attack._blend(x, which, torch.ones(len(x)))  # no public call applies one patch at full opacity
        print(f"patch {k + 1} alone: at its training opacity {opacity} {target_rate(as_trained)}, "
              f"at full opacity {target_rate(opaque)}")


if __name__ == "__main__":
    main()
