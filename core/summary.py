"""Tables of finished runs, read from their ``metrics.json`` and ``config.yaml`` (never typed by hand); laid out
by :mod:`core.tables`.

    python -m core.summary refine_res                      # every finished defense run below refine_res/
    python -m core.summary refine_res/CIFAR10/ResNet18/BadNets --latest
    python -m core.summary attack refine_res --markdown    # attack and defense runs, as Markdown
    python -m core.summary attack refine_res --table1 --preset mini --csv table1.csv   # the paper's Table 1 layout

An attack run's row shows its BA/ASR; a defense run's row shows the model before ("no defense") and after.
``--table1`` pairs each attack's newest finished run with the newest REFINE run of that model (matched by the
defended model's run folder) in the layout of the paper's Table 1: attack × {no defense, REFINE} × {BA, ASR}.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml

from .settings import flatten
from .tables import NO_DEFENSE, TABLE1_DEFENSE, format_table, machine, percent, table1_rows, write_csv


def find_runs(roots) -> list[Path]:
    """Run folders (holding a metrics.json with final metrics) below each root, newest last."""
    runs = set()
    for root in map(Path, roots):
        candidates = [root / "metrics.json"] if (root / "metrics.json").is_file() else root.rglob("metrics.json")
        for path in candidates:
            if path.parent.is_symlink() or "final" not in _read_json(path):
                continue  # a `latest` pointer repeats a real folder
            runs.add(path.parent.resolve())
    return sorted(runs, key=lambda p: (p / "metrics.json").stat().st_mtime)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_config(folder: Path) -> dict:
    """A run's config.yaml as one flat dict, whether it is nested by section or flat (older runs); {} without
    one."""
    path = Path(folder) / "config.yaml"
    try:
        return flatten(yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}


def row(folder: Path) -> dict:
    """One table row for a finished run folder."""
    metrics = _read_json(folder / "metrics.json")
    config = read_config(folder)
    attack = (metrics.get("attack") or {}).get("attack") or config.get("attack", "?")
    before = metrics.get("no_defense")
    after = metrics["final"]
    found = (_read_json(folder / "run.json").get("settings") or {}).get("data") or {}
    data = str((found.get("train") or {}).get("kind") or metrics.get("data") or "")
    minutes = metrics.get("train_wall_seconds_total", metrics.get("train_wall_seconds_this_call"))
    return {
        "run": os.path.relpath(folder),
        "kind": "defense" if before is not None else "attack",
        "attack": attack,
        "preset": config.get("preset") or "custom",
        "data": "embedded sample" if "embedded" in data else "full",
        "BA before": percent(before.get("BA")) if before is not None else "",
        "ASR before": percent(before.get("ASR")) if before is not None else "",
        "BA": percent(after.get("BA")),
        "ASR": percent(after.get("ASR")),
        "min": "–" if minutes is None else f"{minutes / 60:.1f}",
        "machine": machine(folder),
    }


def table1_runs(roots, preset: str | None = None) -> tuple[list, dict]:
    """The runs of the paper's Table 1 below ``roots`` (with ``preset`` if given), as core.tables takes them:
    (``(attack, defense, metrics)`` triples, ``{(attack, column): metrics.json path}``). Per attack its newest
    finished attack run, and the newest finished REFINE run that defended that very model (its ``model_path``
    lies in the attack run's folder)."""
    attacks, defenses = {}, {}
    for folder in find_runs(roots):  # oldest first: later runs replace earlier ones
        config, metrics = read_config(folder), _read_json(folder / "metrics.json")
        if preset and config.get("preset") != preset:
            continue
        if metrics.get("no_defense") is None:
            attacks[config.get("attack")] = folder
        elif config.get("model_path") and config.get("defense", TABLE1_DEFENSE) == TABLE1_DEFENSE:  # older: no key
            defended = Path(config["model_path"]).parent
            defenses[(defended.parent.name, defended.name)] = folder  # (attack, attack run folder name)
    results, sources = [], {}
    for name, folder in attacks.items():
        for column, run in ((NO_DEFENSE, folder), (TABLE1_DEFENSE, defenses.get((name, folder.name)))):
            if run is not None:
                results.append((name, column, _read_json(run / "metrics.json")))
                sources[(name, column)] = run / "metrics.json"
    return results, sources


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", help="run folders or folders that hold runs (attack/, refine_res/, ...)")
    p.add_argument("--latest", action="store_true", help="only the most recently finished run")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--table1", action="store_true", help="the paper's Table 1 layout: attack x {no defense, REFINE}")
    p.add_argument("--preset", help="--table1: only runs of this preset")
    p.add_argument("--csv", help="--table1: also write the table to this CSV file")
    args = p.parse_args(argv)
    if args.table1:
        rows = table1_rows(*table1_runs(args.roots, args.preset))
        if args.csv:
            write_csv(rows, args.csv)
        print(format_table(rows, args.markdown))
        return
    runs = find_runs(args.roots)
    if args.latest:
        runs = runs[-1:]
    print(format_table([row(r) for r in runs], args.markdown))


if __name__ == "__main__":
    main()
