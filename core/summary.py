"""Tables of finished runs, read from their ``metrics.json`` and ``config.yaml`` (never typed by hand).

    python -m core.summary refine_res                      # every finished defense run below refine_res/
    python -m core.summary refine_res/CIFAR10/ResNet18/BadNets --latest
    python -m core.summary attack refine_res --markdown    # attack and defense runs, as Markdown

An attack run's row shows its BA/ASR; a defense run's row shows the model before ("no defense") and after.
"""
from __future__ import annotations

import argparse
import json
import os
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
    }


def format_table(rows: list[dict], markdown: bool = False) -> str:
    if not rows:
        return "no finished runs found"
    keys = [k for k in rows[0] if k != "run"] + ["run"]
    if markdown:
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
        return "\n".join(lines)
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", help="run folders or folders that hold runs (attack/, refine_res/, ...)")
    p.add_argument("--latest", action="store_true", help="only the most recently finished run")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    runs = find_runs(args.roots)
    if args.latest:
        runs = runs[-1:]
    print(format_table([row(r) for r in runs], args.markdown))


if __name__ == "__main__":
    main()
