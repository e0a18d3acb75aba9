"""Defend a (possibly backdoored) classifier with REFINE.

    python refine.py --dataset CIFAR10 --attack BadNets                 # defends attack/CIFAR10/ResNet18/BadNets
    python refine.py --dataset CIFAR10 --attack BadNets --preset mini   # minutes on a laptop CPU
    python refine.py --model-path third_party.pth --model ResNet18 --dataset CIFAR10 --attack BadNets --trigger t.pth
    python refine.py --eval refine_res/CIFAR10/ResNet18/BadNets/latest       # BA/ASR of a saved defense

Without --model-path the model is attack.py's last finished run of the same preset
(attack/<DATASET>/<MODEL>/<ATTACK>/latest-<preset>/model.pth; else .../latest). Outputs go to
refine_res/<DATASET>/<MODEL>/<ATTACK>/<preset>_seed<seed>_<hash8>/ (hash8: of every setting and of the defended
model file's bytes) or --run-name: log.txt, metrics.json, config.yaml, run.json, label_mapping.json,
defended_model.pth; .../<ATTACK>/latest points at the run that finished last. Run the same command again to
resume; a finished run is reported, not retrained.
"""
from core.cli import add_layers, main_guard, new_parser, starting

with starting():  # Ctrl-C while PyTorch loads: one line, exit 130
    from core.config import resolve
    from core.defenses import RefineDefense
    from core.runlog import format_metrics
    from core.run_defense import defaults_for, defense_job_settings, evaluate_run, run_defense
    from core.settings import add_flags


def parse_args(argv=None):
    p = new_parser(__doc__.splitlines()[0])
    p.add_argument("--eval", dest="eval_run", help="evaluate a saved defense (run folder or defended_model.pth) and exit")
    add_layers(p, "refine")
    settings = {k: s for k, s in defense_job_settings(RefineDefense).items() if k != "defense"}
    add_flags(p, settings, help_of={"out": "output root (default refine_res/)"})
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
