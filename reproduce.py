"""Reproduce one table or figure of the REFINE paper: run (or resume) exactly the runs it needs, then write it with
the paper's numbers beside ours.

    python reproduce.py --list                              # every item, what it runs, what is not built yet
    python reproduce.py table1 --preset mini                # Table 1 at the CPU scale: results/reproduce/table1_mini.md
    python reproduce.py table6 --preset paper --device cuda # the paper's recipe
    python reproduce.py table3 --preset mini --table-only   # runs nothing: the finished runs of these settings
    python reproduce.py table1 --preset mini --attacks BadNets Blended   # only these rows
    python reproduce.py figure5                             # every attack's trigger on the same images (PNG)
    python reproduce.py table9 --preset mini --defense-data-root ~/CINIC-10   # REFINE trained on CINIC-10
    python reproduce.py table7 --preset mini --defense-config configs/overlays/refine_short.yaml  # 4-epoch REFINE

Each item is a grid of attack.py / defend.py jobs (compare.py's job runs them: a finished run of the same settings
is reused, an unfinished one resumed, a failed cell reported in one line). Writes <out-table>.md and .csv (ours,
the paper's, the difference, the metrics.json of each cell) and the item's PNG figures beside them. The paper's
numbers are in core/paper_numbers.yaml.
"""
from core.cli import check_writable, main_guard, new_parser, starting

with starting():  # Ctrl-C while PyTorch loads: one line, exit 130
    from core.compare import SHARED
    from core.errors import UserError
    from core.launch import LAUNCH
    from core.reproduce import ITEMS, item_named, listing, reproduce
    from core.run_attack import attack_job_settings
    from core.settings import add_flags


def parse_args(argv=None):
    p = new_parser(__doc__.splitlines()[0])
    p.add_argument("item", nargs="?", help=f"table or figure: {', '.join(ITEMS)}")
    p.add_argument("--list", action="store_true", help="list the items and what each runs, and exit")
    p.add_argument("--preset", help="every job's preset (mini: the CPU scale; paper, the default: the paper's)")
    p.add_argument("--attacks", nargs="+", metavar="ATTACK",
                   help="only these of the item's attacks (default: all); the table leaves the others out and says so")
    add_flags(p, {k: s for k, s in attack_job_settings().items() if k in SHARED and k not in ("dataset", "model")})
    add_flags(p, LAUNCH)  # where the runs go: this process, submitit's local jobs or SLURM
    p.add_argument("--attack-config", dest="attack_config", help="YAML options for every attack.py job")
    p.add_argument("--defense-config", dest="defense_config", help="YAML options for every defense job")
    p.add_argument("--defense-data-root", dest="defense_data_root",
                   help="the defender's images from another tree of the same classes (table9: CINIC-10's folder)")
    p.add_argument("--attack-dir", dest="attack_dir", help="root of attack.py outputs (default attack/)")
    p.add_argument("--defense-dir", dest="defense_dir",
                   help="root of the defense outputs (default defense_res/, REFINE: refine_res/)")
    p.add_argument("--out-table", dest="out_table",
                   help="path of the outputs without extension (default results/reproduce/<item>_<preset>)")
    p.add_argument("--table-only", dest="table_only", action="store_true",
                   help="run nothing: the table of the finished runs whose settings equal those the jobs would run")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if getattr(args, "list", False):
        print(listing())
        return
    if not getattr(args, "item", None):
        raise UserError("name an item (e.g. `python reproduce.py table1 --preset mini`); --list shows them")
    item = item_named(args.item)
    preset = getattr(args, "preset", None) or "paper"
    args.out_table = getattr(args, "out_table", None) or f"results/reproduce/{item.name}_{preset}"
    check_writable(args.out_table, "--out-table")  # known now, not after hours of runs
    written, failed = reproduce(item.name, args)
    print("wrote " + ", ".join(map(str, written)))
    if failed:
        raise UserError(f"{len(failed)} job(s) failed ({', '.join(failed)}); their cells are empty, the others "
                        f"are in the table")


if __name__ == "__main__":
    main_guard(main)
