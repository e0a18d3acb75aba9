"""Defend a (possibly backdoored) classifier with any defense of the toolkit.

    python defend.py --defense BTI-DBF-P --dataset CIFAR10 --attack BadNets          # the authors' settings
    python defend.py --defense ShrinkPad --attack BadNets --pad-size 4 --preset mini
    python defend.py --defense NC --attack Blended --preset mini
    python defend.py --list                                                          # the defenses and settings
    python defend.py --eval defense_res/CIFAR10/ResNet18/BadNets/NC/latest           # BA/ASR of a saved defense

Defenses: REFINE (same as refine.py), BTI-DBF-P, BTI-DBF-U, NC, ShrinkPad, T-MR, FT, FT+REFINE. The model is
attack/<DATASET>/<MODEL>/<ATTACK>/latest/model.pth unless --model-path names one. Outputs go to
defense_res/<DATASET>/<MODEL>/<ATTACK>/<DEFENSE>/<preset>_seed<seed>_<hash8>/ (REFINE: refine_res/..., as
refine.py): log.txt, metrics.json (BA/ASR before and after, a detection result where the defense has one),
config.yaml, defended_model.pth (input transform, classifier, output map; loadable with
core.load_deployed). Run the same command again to resume; a finished run is reported, not retrained.
"""
from core.cli import int_list, main_guard, new_parser, str2bool, value_type
from core.config import resolve
from core.data import DATASETS
from core.defenses import DEFENSES, defense_class
from core.errors import UserError
from core.models import MODEL_NAMES, NORMALIZATIONS
from core.runlog import format_metrics
from core.run_defense import all_defense_settings, defaults_for, evaluate_run, run_defense


def parse_args(argv=None):
    p = new_parser(__doc__.splitlines()[0])
    p.add_argument("--defense", help=f"one of {', '.join(DEFENSES)}")
    p.add_argument("--list", action="store_true", help="list the defenses with their settings and exit")
    p.add_argument("--eval", dest="eval_run", help="evaluate a saved defense (run folder or defended_model.pth) and exit")
    p.add_argument("--dataset", choices=list(DATASETS))
    p.add_argument("--model", choices=MODEL_NAMES)
    p.add_argument("--attack", help="attack name: picks attack/<DATASET>/<MODEL>/<ATTACK>/latest/model.pth and the trigger")
    p.add_argument("--preset", help="YAML preset: configs/defense/ (REFINE: configs/refine/); paper settings without one")
    p.add_argument("--config", help="YAML file of options, applied after the preset")
    p.add_argument("--model-path", dest="model_path", help="checkpoint to defend (any source)")
    p.add_argument("--attack-dir", dest="attack_dir", help="root of attack.py outputs (default attack/)")
    p.add_argument("--tlabel", "--y-target", dest="tlabel", type=int, help="target label, for third-party models")
    p.add_argument("--trigger", help="trigger file, for third-party models")
    p.add_argument("--normalization", choices=list(NORMALIZATIONS), help="normalization of a raw third-party state_dict")
    p.add_argument("--test-size", dest="test_size", type=int, help="class-balanced test subset")
    p.add_argument("--data-root", dest="data_root", help="data folder or .tar.gz (default data/)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-root if it is not there")
    p.add_argument("--allow-embedded", dest="allow_embedded", type=str2bool)
    p.add_argument("--out", help="output root (default defense_res/; REFINE: refine_res/)")
    p.add_argument("--run-name", dest="run_name", help="run folder name (default <preset>_seed<seed>_<hash8>)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 or a GPU index")
    p.add_argument("--amp", type=str2bool)
    p.add_argument("--compile", type=str2bool, nargs="?", const=True, help="torch.compile where a defense supports it")
    p.add_argument("--fused", type=str2bool, nargs="?", const=True, help="fused optimizer kernels on CUDA")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-every", dest="eval_every", type=int)
    p.add_argument("--fresh", action="store_true", help="discard an unfinished run (a finished run is never discarded)")
    # every defense's own settings, one flag each; a setting of another defense is refused in main()
    for key, default in all_defense_settings().items():
        owners = [name for name, cls in DEFENSES.items() if key in cls.defaults]
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=int_list if isinstance(default, list) else value_type(default),
                       help=f"setting of {', '.join(owners)}")
    return p.parse_args(argv)


def list_defenses() -> None:
    for name, cls in DEFENSES.items():
        print(f"{name}: {cls.summary}")
        print("    " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in cls.defaults.items()))


def main(argv=None):
    args = parse_args(argv)
    if "list" in args:
        list_defenses()
        return
    if "eval_run" in args:
        metrics = evaluate_run(args.eval_run, getattr(args, "data_root", "data"), getattr(args, "device", "auto"))
        print(f"{args.eval_run}: {format_metrics(metrics)}")
        return
    cls = defense_class(getattr(args, "defense", "REFINE"))
    args.defense = cls.name
    settings = all_defense_settings()
    foreign = sorted(k for k in vars(args) if k in settings and k not in cls.defaults)
    if foreign:
        flag = "--" + foreign[0].replace("_", "-")
        owners = [name for name, other in DEFENSES.items() if foreign[0] in other.defaults]
        raise UserError(f"{flag} is a setting of {', '.join(owners)}, not of {cls.name}; "
                        f"`python defend.py --list` shows each defense's settings")
    if "preset" not in args and cls.name == "REFINE":
        args.preset = "paper"
    run_defense(resolve(cls.preset_task, defaults_for(cls.name), args))


if __name__ == "__main__":
    main_guard(main)
