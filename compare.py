"""Compare defenses against attacks: run what is missing, then write the paper's Tables 1-2 layout.

    python compare.py --dataset CIFAR10 --attacks BadNets Blended --defenses REFINE BTI-DBF-P BTI-DBF-U NC \\
        ShrinkPad T-MR FT --preset mini --out-table docs/tables/compare_mini
    python compare.py --attacks BadNets Blended --defenses NC FT --preset mini --table-only   # runs nothing
    python compare.py --attacks BadNets --defenses ShrinkPad --sweep pad_size=0,2,4,6 --preset mini
    python compare.py --attacks BadNets --defenses REFINE --sweep lam=0.1,1 unet_channels=16,32 --preset mini
    python compare.py --attacks BadNets --defenses REFINE ShrinkPad --seeds 0 1 2 --preset mini   # mean ± std

For each attack, attack.py's job first (a finished run of the same settings is reused, an unfinished one
resumed), then each defense's job (defend.py's) on that model. A job that fails is reported in one line and
the comparison goes on. --preset, --device, --seed, --data-root, --attack-dir, --allow-embedded and
--test-size go to every job; --attack-config / --defense-config are the jobs' --config files (a defense
config may hold per-defense sections, e.g. ``FT: {ft_epochs: 1}``). Every number is read from the runs'
metrics.json. Writes <out-table>.md (BA/ASR per attack and defense, a failed defense - ASR > 10 % or BA more
than 10 points below the BA without defense - marked ✗, missing cells —; the detected target classes of
BTI-DBF and NC; the metrics.json of each cell), <out-table>.csv (with a `<DEFENSE> failed` column) and, when a
defense detects, <out-table>_detection.csv.
"""
from core.cli import check_writable, main_guard, new_parser, starting

with starting():  # Ctrl-C while PyTorch loads: one line, exit 130
    from core.compare import SHARED, compare, run_over_seeds, table_only_results
    from core.defenses import DEFENSES
    from core.errors import UserError
    from core.launch import LAUNCH
    from core.run_attack import attack_job_settings
    from core.settings import add_flags
    from core.tables import markdown, write_tables


def parse_args(argv=None):
    p = new_parser(__doc__.splitlines()[0])
    p.add_argument("--attacks", nargs="+", required=True,
                   help="attack names (rows of the table); <ATTACK>-adaptive: that attack's model fine-tuned by the "
                        "adaptive attack (attack.py --adaptive-gamma; the paper's Table 4)")
    p.add_argument("--adaptive-gamma", dest="adaptive_gamma", type=float,
                   help="γ of the <ATTACK>-adaptive rows (default 1.0)")
    default = [name for name, cls in DEFENSES.items() if cls.compared_by_default]
    p.add_argument("--defenses", nargs="+", default=default,
                   help=f"defense names (columns), of {', '.join(DEFENSES)} (default {' '.join(default)})")
    p.add_argument("--preset", help="every job's preset (attack: configs/attack/, defenses: configs/defense/, "
                                    "REFINE: configs/refine/); the paper's settings without one")
    add_flags(p, {k: s for k, s in attack_job_settings().items() if k in SHARED})  # every job gets these
    p.add_argument("--attack-config", dest="attack_config", help="YAML options for every attack.py job")
    p.add_argument("--defense-config", dest="defense_config", help="YAML options for every defense job "
                                                                   "(per-defense sections allowed)")
    p.add_argument("--attack-dir", dest="attack_dir", help="root of attack.py outputs (default attack/)")
    p.add_argument("--defense-dir", dest="defense_dir",
                   help="root of the defense outputs (default defense_res/, REFINE: refine_res/)")
    p.add_argument("--out-table", dest="out_table",
                   help="path of the tables without extension (default results/compare_<DATASET>_<preset>)")
    p.add_argument("--table-only", dest="table_only", action="store_true",
                   help="run nothing: the table of the finished runs whose settings equal, in full, those the jobs "
                        "would run")
    p.add_argument("--sweep", nargs="+", metavar="SETTING=V1,V2,...",
                   help="one column per value for each defense that has the setting (e.g. pad_size=0,2,4 for "
                        "ShrinkPad's BA/ASR trade-off); several settings give one column per combination of values "
                        "(e.g. --sweep lam=0.1,1 unet_channels=16,32)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help="run every cell once per seed (replaces --seed); the table shows mean ± std over the seeds")
    add_flags(p, LAUNCH)
    p.add_argument("--skip-missing", dest="skip_missing", action="store_true",
                   help="train no attack model: defend attack.py's latest finished model of each attack, skip "
                        "an attack that has none")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dataset = getattr(args, "dataset", "CIFAR10")
    stem = getattr(args, "out_table", None) or f"results/compare_{dataset}_{getattr(args, 'preset', None) or 'paper'}"
    check_writable(stem, "--out-table")  # known now, not after the jobs
    run = table_only_results if getattr(args, "table_only", False) else compare
    if getattr(args, "seeds", None):
        results, sources, failed = run_over_seeds(run, args, args.seeds)
    else:
        results, sources, failed = run(args)
    title = (f"{dataset} / {getattr(args, 'model', 'ResNet18')}, preset {getattr(args, 'preset', None) or 'paper'}: "
             f"BA / ASR (%)" + (f", mean ± std over seeds {', '.join(map(str, dict.fromkeys(args.seeds)))}"
                                if getattr(args, "seeds", None) else ""))
    defenses = [d for _, d, _ in results if d is not None]
    print(markdown(results, defenses=defenses, title=title, sources=sources))
    written = write_tables(results, stem, defenses=defenses, title=title, sources=sources)
    print("tables: " + ", ".join(map(str, written)))
    if failed:
        raise UserError(f"{len(failed)} job(s) failed ({', '.join(failed)}); their cells are empty, the others "
                        f"are in the tables")


if __name__ == "__main__":
    main_guard(main)
