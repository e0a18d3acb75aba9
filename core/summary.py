"""Tables of finished runs, read from their ``metrics.json`` and ``config.yaml`` (never typed by hand).

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
import re
from pathlib import Path

import yaml


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


def machine(folder: Path) -> str:
    """The machine a run trained on: recorded in its metrics.json, or (older runs) read from the first line of
    its log.txt ("..., device cpu, ..."); "?" when neither says."""
    recorded = _read_json(folder / "metrics.json").get("device")
    if recorded:
        return str(recorded)
    try:
        with open(folder / "log.txt") as fh:
            first = fh.readline()
    except OSError:
        return "?"
    match = re.search(r"device (\S+?),", first)
    return match.group(1) if match else "?"


def _pct(m: dict | None, key: str) -> str:
    return "–" if not m or key not in m else f"{m[key]:.2f}"


def row(folder: Path) -> dict:
    """One table row for a finished run folder."""
    metrics = _read_json(folder / "metrics.json")
    config = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
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
        "BA before": _pct(before, "BA") if before is not None else "",
        "ASR before": _pct(before, "ASR") if before is not None else "",
        "BA": _pct(after, "BA"),
        "ASR": _pct(after, "ASR"),
        "min": "–" if minutes is None else f"{minutes / 60:.1f}",
        "machine": machine(folder),
    }


def format_table(rows: list[dict], markdown: bool = False) -> str:
    if not rows:
        return "no finished runs found"
    keys = [k for k in rows[0] if k != "run"] + (["run"] if "run" in rows[0] else [])
    if markdown:
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
        return "\n".join(lines)
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


# The paper's row order of Table 1.
TABLE1_ATTACKS = ("BadNets", "Blended", "WaNet", "Physical", "BATT", "LC", "Adaptive")


def _config(folder: Path) -> dict:
    path = folder / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def table1_rows(roots, preset: str | None = None) -> list[dict]:
    """One row per attack of :data:`TABLE1_ATTACKS` that has a finished attack run below ``roots`` (with
    ``preset`` if given): its BA/ASR without defense, and those of the newest finished REFINE run that
    defended that very model (its ``model_path`` lies in the attack run's folder); empty cells otherwise."""
    attacks, defenses = {}, {}
    for folder in find_runs(roots):  # oldest first: later runs replace earlier ones
        config, metrics = _config(folder), _read_json(folder / "metrics.json")
        if preset and config.get("preset") != preset:
            continue
        if metrics.get("no_defense") is None:
            attacks[config.get("attack")] = folder
        elif config.get("model_path") and config.get("defense", "REFINE") == "REFINE":  # older runs: no key
            defended = Path(config["model_path"]).parent
            defenses[(defended.parent.name, defended.name)] = folder  # (attack, attack run folder name)
    rows = []
    for name in TABLE1_ATTACKS:
        if name not in attacks:
            continue
        folder = attacks[name]
        before = _read_json(folder / "metrics.json")["final"]
        defense = defenses.get((name, folder.name))
        after = _read_json(defense / "metrics.json")["final"] if defense else None
        drop = f"{before['BA'] - after['BA']:.2f}" if after else ""
        machines = dict.fromkeys([machine(folder)] + ([machine(defense)] if defense else []))
        rows.append({"attack": name, "no defense BA": _pct(before, "BA"), "no defense ASR": _pct(before, "ASR"),
                     "REFINE BA": _pct(after, "BA") if after else "", "REFINE ASR": _pct(after, "ASR") if after else "",
                     "BA drop": drop, "machine": " / ".join(machines), "attack run": os.path.relpath(folder / "metrics.json"),
                     "REFINE run": os.path.relpath(defense / "metrics.json") if defense else ""})
    return rows


def write_csv(rows: list[dict], path) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["attack"])
        writer.writeheader()
        writer.writerows(rows)


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
        rows = table1_rows(args.roots, args.preset)
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
