"""How much of a model's BA loss is in its BatchNorm running statistics? BA/ASR of a saved model as it is, then
after its BatchNorm running means and variances are recomputed on clean training images (a cumulative average
over the images, weights untouched: ``torch.optim.swa_utils.update_bn``). Made for the adaptive attack (Table 4):
its first version (``--adaptive-bn joint``) runs F in training mode on x and on T_a(x), so the running statistics
mix both distributions, while F is evaluated on x alone.

    python experiments/probe_bn_recalibration.py attack/CIFAR10/ResNet18/BadNets-adaptive/latest/model.pth

The recalibration images are the model's own training split without any trigger (``--images`` of them, drawn
with a fixed seed); BA on the full test split, ASR on its non-target images with the test trigger.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.attacks import restore_attack  # noqa: E402
from core.checkpoint import load_classifier  # noqa: E402
from core.data import load_split, to_float  # noqa: E402
from core.metrics import ba_asr  # noqa: E402


def recalibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> int:
    """Replaces every BatchNorm layer's running statistics by their average over ``images`` (uint8 N×C×H×W,
    converted to float in [0, 1]). Returns the number of BatchNorm layers reset."""
    with torch.no_grad():
        update_bn((to_float(images[i:i + batch_size]) for i in range(0, len(images), batch_size)), model)
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data-root", default="data")
    p.add_argument("--images", type=int, default=10000, help="clean training images for the recalibration")
    args = p.parse_args()
    model, meta = load_classifier(args.model)
    model.eval()
    attack = restore_attack(meta["attack"], meta.get("trigger"))
    dataset = meta.get("dataset", "CIFAR10")
    test = load_split(dataset, "test", args.data_root)
    poisoned_test = attack.poison_test(test)
    train = load_split(dataset, "train", args.data_root)
    pick = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(0))[:args.images]

    before = ba_asr(model, test, poisoned_test)
    layers = recalibrate_batchnorm(model, train.images[pick])
    model.eval()
    after = ba_asr(model, test, poisoned_test)
    print(json.dumps({"model": args.model, "batchnorm_layers": layers, "recalibration_images": len(pick),
                      "as_saved": before, "recalibrated": after}))


if __name__ == "__main__":
    main()
