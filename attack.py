"""Train a backdoored (or benign) classifier.

    python attack.py --dataset CIFAR10 --attack BadNets                 # the paper's settings
    python attack.py --dataset CIFAR10 --attack BadNets --preset mini   # minutes on a laptop CPU

Outputs go to attack/<DATASET>/<MODEL>/<ATTACK>/<preset>_seed<seed>_<hash8>/ (hash8: of every setting that
changes the model, so runs with other settings never share a folder): model.pth, trigger.pth + trigger_*.png,
config.yaml, run.json, metrics.json, log.txt. attack/<DATASET>/<MODEL>/<ATTACK>/latest points at the run that
finished last (refine.py defends that one). Run the same command again to resume an interrupted run; a
finished one is reported, not retrained.
"""
from core.attacks import ALIASES, ATTACKS, all_settings
from core.cli import add_settings, int_list, main_guard, new_parser, str2bool
from core.config import resolve
from core.data import DATASETS
from core.models import MODEL_NAMES, NORMALIZATION_HELP, NORMALIZATIONS
from core.run_attack import DEFAULTS, run_attack


def parse_args(argv=None):
    p = new_parser(__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=list(DATASETS))
    p.add_argument("--model", choices=MODEL_NAMES)
    p.add_argument("--attack", help=f"one of {', '.join(ATTACKS)} (also {', '.join(ALIASES)})")
    p.add_argument("--preset", help="YAML preset in configs/attack/ (paper [default], mini, fast)")
    p.add_argument("--config", help="YAML file of options, applied after the preset")
    p.add_argument("--tlabel", "--y-target", dest="y_target", type=int, help="target label (default 0)")
    p.add_argument("--poisoned-rate", "--poisoned_rate", dest="poisoned_rate", type=float,
                   help="share of the training set relabelled (default: the attack's, 0.1; LC: share of the target "
                        "class, 0.25; Adaptive: 0.01)")
    p.add_argument("--trigger", help="BadNets, Blended, Physical, LC: trigger file (.pth tensor or image) instead of "
                                     "the generated one")
    add_settings(p, all_settings())
    p.add_argument("--width", type=int, help="channel width of CIFAR models (64 = standard)")
    p.add_argument("--normalization", choices=list(NORMALIZATIONS),
                   help=f"input normalization inside the model (default cifar10); {NORMALIZATION_HELP}")
    p.add_argument("--mean", help="explicit per-channel mean R,G,B (with --std; replaces --normalization)")
    p.add_argument("--std", help="explicit per-channel std R,G,B, e.g. 0.2023,0.1994,0.2010 (with --mean)")
    p.add_argument("--epochs", "--epoch", dest="epochs", type=int)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", "--optim", dest="optimizer", choices=["SGD", "Adam"])
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--schedule", choices=["multistep", "cosine", "onecycle", "constant"])
    p.add_argument("--milestones", type=int_list, help="multistep epochs, e.g. '100,130'")
    p.add_argument("--gamma", type=float, help="multistep factor")
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float)
    p.add_argument("--augment", choices=["crop_flip", "flip", "none"], help="training augmentation (flip, the authors' choice for backdoored models)")
    p.add_argument("--train-size", dest="train_size", type=int, help="class-balanced training subset")
    p.add_argument("--test-size", dest="test_size", type=int, help="class-balanced test subset")
    p.add_argument("--data-root", dest="data_root", help="data folder or .tar.gz (default data/)")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR-10 (torchvision, md5-checked) into --data-root if it is not there; "
                        "ImageNet-50 must be prepared by hand (docs/data.md)")
    p.add_argument("--allow-embedded", dest="allow_embedded", type=str2bool,
                   help="use the CIFAR-10 sample in data/ when no full copy is found")
    p.add_argument("--out", help="output root (default attack/)")
    p.add_argument("--device", "--gpu", dest="device", help="auto, cpu, cuda, cuda:1 or a GPU index")
    p.add_argument("--amp", type=str2bool, help="bf16 autocast on CUDA (default true)")
    p.add_argument("--compile", type=str2bool, nargs="?", const=True,
                   help="train through torch.compile (a one-off compilation; eager again where it fails; default false)")
    p.add_argument("--fused", type=str2bool, nargs="?", const=True,
                   help="fused optimizer kernels on CUDA (default false)")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-every", dest="eval_every", type=int)
    p.add_argument("--fresh", action="store_true", help="discard an unfinished run of the same settings (a finished run is never discarded)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if "preset" not in args:
        args.preset = "paper"
    run_attack(resolve("attack", DEFAULTS, args))


if __name__ == "__main__":
    main_guard(main)
