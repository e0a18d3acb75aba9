"""Defend a (possibly backdoored) classifier with REFINE.

    python refine.py --dataset CIFAR10 --attack BadNets                 # defends attack/CIFAR10/ResNet18/BadNets
    python refine.py --dataset CIFAR10 --attack BadNets --preset mini   # minutes on a laptop CPU
    python refine.py --model-path third_party.pth --model ResNet18 --dataset CIFAR10 --attack BadNets --trigger t.pth
    python refine.py --eval refine_res/CIFAR10/ResNet18/BadNets/latest       # BA/ASR of a saved defense

Without --model-path the model is attack/<DATASET>/<MODEL>/<ATTACK>/latest/model.pth (attack.py's last finished
run). Outputs go to refine_res/<DATASET>/<MODEL>/<ATTACK>/<preset>_seed<seed>_<hash8>/ (hash8: of every setting
and of the defended model file's bytes) or --run-name: log.txt, metrics.json, config.yaml, run.json,
label_mapping.json, unet.pth, defended_model.pth; .../<ATTACK>/latest points at the run that finished last.
Run the same command again to resume; a finished run is reported, not retrained.
"""
from core.cli import int_list, main_guard, new_parser, str2bool
from core.config import resolve
from core.data import DATASETS
from core.models import MODEL_NAMES, NORMALIZATION_HELP, NORMALIZATIONS
from core.runlog import format_metrics
from core.run_defense import defaults_for, evaluate_run, run_defense


def parse_args(argv=None):
    p = new_parser(__doc__.splitlines()[0])
    p.add_argument("--eval", dest="eval_run", help="evaluate a saved defense (run folder or defended_model.pth) and exit")
    p.add_argument("--dataset", choices=list(DATASETS))
    p.add_argument("--model", choices=MODEL_NAMES)
    p.add_argument("--attack", help="attack name: picks attack/<DATASET>/<MODEL>/<ATTACK>/model.pth and the trigger")
    p.add_argument("--preset", help="YAML preset in configs/refine/ (paper [default], mini, fast)")
    p.add_argument("--config", help="YAML file of options, applied after the preset")
    p.add_argument("--model-path", "--model_path", dest="model_path", help="checkpoint to defend (any source)")
    p.add_argument("--attack-dir", dest="attack_dir", help="root of attack.py outputs (default attack/)")
    p.add_argument("--tlabel", "--y-target", dest="tlabel", type=int, help="target label, for third-party models")
    p.add_argument("--trigger", help="trigger file, for third-party models")
    p.add_argument("--normalization", choices=list(NORMALIZATIONS),
                   help=f"input normalization of a raw third-party state_dict (default none; a model saved by "
                        f"attack.py records its own); {NORMALIZATION_HELP}")
    p.add_argument("--mean", help="explicit per-channel mean R,G,B of a raw state_dict (with --std)")
    p.add_argument("--std", help="explicit per-channel std R,G,B of a raw state_dict (with --mean)")
    p.add_argument("--unet-channels", "--unet_channels", dest="unet_channels", type=int)
    p.add_argument("--loss", choices=["ce", "bce"], help="ce: the paper's formula; bce: the authors' code")
    p.add_argument("--sup", type=float, help="weight λ of the supervised contrastive loss (0.1)")
    p.add_argument("--temperature", type=float, help="SupCon temperature (0.07)")
    p.add_argument("--no-remap", dest="remap", action="store_false", help="ablation 'w/o HRF': identity mapping")
    p.add_argument("--no-supcon", dest="sup", action="store_const", const=0.0, help="ablation 'w/o SCL': λ = 0")
    p.add_argument("--optim", "--optimizer", dest="optimizer", choices=["SGD", "Adam"])
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--schedule", choices=["multistep", "cosine", "onecycle", "constant"])
    p.add_argument("--milestones", type=int_list)
    p.add_argument("--decay", type=float, help="multistep factor (0.8)")
    p.add_argument("--augment", choices=["refine", "refine_clamp", "crop_flip", "flip", "none"],
                   help="augmentation of the unlabeled images (refine: resized crop + flip + grayscale, an oversized "
                        "crop redrawn as torchvision and the authors' code do; refine_clamp: clamped, the mini preset)")
    p.add_argument("--supcon-views", dest="supcon_views", type=int, choices=[1, 2],
                   help="copies of each transformed image in the SupCon loss: 2 as the authors' code (default; every "
                        "image is also its own positive), 1 as the paper's formula (the mini preset)")
    p.add_argument("--pseudo-fp32", dest="pseudo_fp32", type=str2bool, nargs="?", const=True,
                   help="pseudo-labels from an fp32 forward pass of F even under bf16 autocast (the authors' code runs "
                        "everything in fp32; default false: bf16 on CUDA, which is faster; CPUs always use fp32)")
    p.add_argument("--pseudo-labels", dest="pseudo_labels", choices=["augmented", "clean"],
                   help="ȳ from each augmented batch (authors' code, default) or once from the clean images (faster)")
    p.add_argument("--compile", type=str2bool, nargs="?", const=True,
                   help="run T and F through torch.compile (faster after a one-off compilation of about 2 min on a CPU; "
                        "falls back to eager mode where compilation fails)")
    p.add_argument("--fused", type=str2bool, nargs="?", const=True,
                   help="fused optimizer kernels on CUDA (default false)")
    p.add_argument("--epochs", "--epoch", dest="epochs", type=int)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int)
    p.add_argument("--data-fraction", dest="data_fraction", type=float, help="share of the unlabeled data used")
    p.add_argument("--test-size", dest="test_size", type=int, help="class-balanced test subset")
    p.add_argument("--data-root", dest="data_root", help="data folder or .tar.gz (default data/)")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR-10 (torchvision, md5-checked) into --data-root if it is not there; "
                        "ImageNet-50 must be prepared by hand (docs/data.md)")
    p.add_argument("--allow-embedded", dest="allow_embedded", type=str2bool)
    p.add_argument("--refine_res", "--out", dest="out", help="output root (default refine_res/)")
    p.add_argument("--run-name", dest="run_name", help="run folder name (default <preset>_seed<seed>_<hash8>)")
    p.add_argument("--gpu_id", "--device", dest="device", help="auto, cpu, cuda, cuda:1 or a GPU index")
    p.add_argument("--amp", type=str2bool)
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-every", dest="eval_every", type=int)
    p.add_argument("--fresh", action="store_true", help="discard an unfinished run (a finished run is never discarded)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if "eval_run" in args:
        metrics = evaluate_run(args.eval_run, getattr(args, "data_root", "data"), getattr(args, "device", "auto"))
        print(f"{args.eval_run}: {format_metrics(metrics)}")
        return
    if "preset" not in args:
        args.preset = "paper"
    run_defense(resolve("refine", defaults_for("REFINE"), args))


if __name__ == "__main__":
    main_guard(main)
