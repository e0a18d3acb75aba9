"""Train a backdoored (or benign) classifier.

    python attack.py --dataset CIFAR10 --attack BadNets                 # the paper's settings
    python attack.py --dataset CIFAR10 --attack BadNets --preset mini   # minutes on a laptop CPU

Outputs go to attack/<DATASET>/<MODEL>/<ATTACK>/<preset>_seed<seed>_<hash8>/ (hash8: of every setting that
changes the model, so runs with other settings never share a folder): model.pth, trigger.pth + trigger_*.png,
config.yaml, run.json, metrics.json, log.txt. attack/<DATASET>/<MODEL>/<ATTACK>/latest points at the run that
finished last, latest-<preset> at the last one of each preset (refine.py defends that one). Run the same command
again to resume an interrupted run; a finished one is reported, not retrained.
"""
from core.cli import add_layers, main_guard, new_parser, starting

with starting():  # Ctrl-C while PyTorch loads: one line, exit 130
    from core.adaptive_attack import refuse_stray_flags
    from core.attacks import ATTACKS
    from core.config import resolve
    from core.run_attack import attack_job_settings, run_attack
    from core.settings import add_flags, defaults, owners_of


def parse_args(argv=None):
    p = new_parser(__doc__.splitlines()[0])
    add_layers(p, "attack")
    names = ", ".join(ATTACKS) + f" (also {', '.join(ATTACKS.aliases)})"
    add_flags(p, attack_job_settings(), owners=owners_of(ATTACKS.values()), help_of={"attack": f"one of {names}"})
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if "preset" not in args:
        args.preset = "paper"
    refuse_stray_flags(vars(args))
    run_attack(resolve("attack", defaults(attack_job_settings()), args))


if __name__ == "__main__":
    main_guard(main)
