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
from core.cli import add_layers, main_guard, new_parser, starting

with starting():  # Ctrl-C while PyTorch loads: one line, exit 130
    from core.config import CONFIG_DIR, resolve
    from core.defenses import DEFENSES, defense_class
    from core.errors import UserError
    from core.runlog import format_metrics
    from core.run_defense import COMMON, all_defense_settings, defaults_for, evaluate_run, run_defense
    from core.settings import add_flags, describe, owners_of


def parse_args(argv=None):
    p = new_parser(__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="list the defenses with their settings and exit")
    p.add_argument("--eval", dest="eval_run", help="evaluate a saved defense (run folder or defended_model.pth) and exit")
    add_layers(p, "defense")
    # the common settings, then every defense's own, one flag each; a setting of another defense is refused in main()
    add_flags(p, COMMON, help_of={"defense": f"one of {', '.join(DEFENSES)}"})
    add_flags(p, all_defense_settings(), owners=owners_of(DEFENSES.values()))
    return p.parse_args(argv)


def list_defenses() -> None:
    for name, cls in DEFENSES.items():
        aliases = f" (also {', '.join(cls.aliases)})" if cls.aliases else ""
        print(f"{name}{aliases}: {cls.summary}")
        for flags, default, allowed, help_text in describe(cls.settings):
            print(f"    {flags.replace('`', '')} {default}: {help_text}; {allowed}")


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
    owners = owners_of(DEFENSES.values())
    foreign = sorted(k for k in vars(args) if k in owners and k not in cls.settings)
    if foreign:
        flag = "--" + foreign[0].replace("_", "-")
        raise UserError(f"{flag} is a setting of {', '.join(owners[foreign[0]])}, not of {cls.name}; "
                        f"`python defend.py --list` shows each defense's settings")
    if "preset" not in args and (CONFIG_DIR / cls.preset_task / "paper.yaml").is_file():
        args.preset = "paper"  # the paper's settings: the built-in defaults plus the per-data-set sections
    run_defense(resolve(cls.preset_task, defaults_for(cls.name), args))


if __name__ == "__main__":
    main_guard(main)
