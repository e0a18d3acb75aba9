"""The one place that lays out result tables, from ``(attack, defense, metrics)`` triples read from the runs'
``metrics.json`` (never typed by hand), and the one CSV writer.

* the comparison (compare.py; the paper's Tables 1-2): attacks × defenses, BA/ASR, a failing number marked ✗,
  the detection table of the defenses that name a target class, and the file each cell was read from:
  :func:`table_rows`, :func:`detection_rows`, :func:`markdown`, :func:`write_tables`;
* the paper's Table 1 (``python -m core.summary --table1``): the same comparison with one defense column,
  REFINE, laid out as attack × {no defense, REFINE} × {BA, ASR} with the BA drop, the machine and the runs:
  :func:`table1_rows` (its numbers are :func:`table_rows`' cells);
* text tables of string rows (plain or Markdown): :func:`format_table`; CSV: :func:`write_csv`, :func:`load_csv`.

``results``: ``(attack, defense, metrics)`` triples; ``defense`` None (or "No Defense") for the attack run's
metrics.json (its ``final``), else a defense run's metrics.json (``final``, ``no_defense``, ``detection``) under
its column label (a defense name, or a swept label such as "ShrinkPad pad_size=2"); metrics None: no finished
run. ``sources``: ``{(attack, column label): path of the metrics.json}``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from .errors import UserError

NO_DEFENSE = "No Defense"
MISSING = "—"
FAILED_MARK = " ✗"
ASR_LIMIT = 10.0  # a defense fails when its ASR is above this (%) ...
BA_DROP_LIMIT = 10.0  # ... or its BA is more than this many points below the no-defense BA
# The paper's rows of Table 1, in its order, and its one defense column.
TABLE1_ATTACKS = ("BadNets", "Blended", "WaNet", "Physical", "BATT", "LC", "Adaptive")
TABLE1_DEFENSE = "REFINE"


# -- the cells ----------------------------------------------------------------------------------------------

def _label(defense) -> str:
    return NO_DEFENSE if defense in (None, NO_DEFENSE) else defense


def ordered(values) -> list:
    """``values`` without repeats, in the order they first appear."""
    return list(dict.fromkeys(values))


def _index(results) -> dict:
    """``{(attack, defense label): metrics}`` of the triples; a later triple replaces an earlier one."""
    return {(attack, _label(defense)): metrics for attack, defense, metrics in results}


def _attacks(results, attacks) -> list:
    return ordered(attacks or [a for a, _, _ in results])


def _defenses(results, defenses) -> list:
    return ordered(defenses or [_label(d) for _, d, _ in results if _label(d) != NO_DEFENSE])


def failure(metrics: dict | None, reference_ba: float | None) -> dict | None:
    """Which numbers of a defense cell fail: ``{'asr': bool, 'ba': bool, 'failed': bool}``; None for a
    missing cell. ``reference_ba``: the BA without defense (None: the BA is not judged)."""
    final = (metrics or {}).get("final")
    if not final or "BA" not in final:
        return None
    asr = final.get("ASR") is not None and final["ASR"] > ASR_LIMIT
    ba = reference_ba is not None and reference_ba - final["BA"] > BA_DROP_LIMIT
    return {"asr": asr, "ba": ba, "failed": asr or ba}


def _reference_ba(metrics: dict | None, attack_metrics: dict | None):
    """The no-defense BA a defense cell is judged against: the defense run's own ``no_defense`` (same model,
    same test images), else the attack run's final BA."""
    for source in ((metrics or {}).get("no_defense"), (attack_metrics or {}).get("final")):
        if source and source.get("BA") is not None:
            return source["BA"]
    return None


def _spread(column: str, final: dict) -> dict:
    """The std over seeds and their count, for a cell averaged over seeds (compare.py --seeds); {} otherwise."""
    if "seeds" not in final:
        return {}
    return {f"{column} BA std": final.get("BA_std"), f"{column} ASR std": final.get("ASR_std"),
            f"{column} seeds": final["seeds"]}


def table_rows(results, attacks=None, defenses=None) -> list[dict]:
    """One CSV-ready row per attack: ``attack``, ``No Defense BA/ASR`` and for each defense ``<D> BA``,
    ``<D> ASR`` and ``<D> failed`` (floats and bools as read; None for a missing cell).
    ``attacks``/``defenses``: row and column order (default: as they first appear in ``results``)."""
    cells = _index(results)
    rows = []
    for attack in _attacks(results, attacks):
        base = cells.get((attack, NO_DEFENSE))
        final = (base or {}).get("final") or {}
        row = {"attack": attack, f"{NO_DEFENSE} BA": final.get("BA"), f"{NO_DEFENSE} ASR": final.get("ASR"),
               **_spread(NO_DEFENSE, final)}
        for defense in _defenses(results, defenses):
            metrics = cells.get((attack, defense))
            after = (metrics or {}).get("final") or {}
            verdict = failure(metrics, _reference_ba(metrics, base))
            row.update({f"{defense} BA": after.get("BA"), f"{defense} ASR": after.get("ASR"),
                        f"{defense} failed": None if verdict is None else verdict["failed"], **_spread(defense, after)})
        rows.append(row)
    return rows


def detects(defense: str, metrics=()) -> bool:
    """Whether the column ``defense`` names a target class: a registered defense says so itself
    (``detects_target``); for another label (a swept column such as "ShrinkPad pad_size=2") it does when one of
    its cells' ``metrics`` holds ``detection['target']``."""
    from .defenses import defense_class  # the registry imports torch; the tables need it only here

    try:
        return bool(defense_class(defense).detects_target)
    except UserError:
        return any("target" in ((m or {}).get("detection") or {}) for m in metrics)


def detection_rows(results, attacks=None, defenses=None) -> list[dict]:
    """One row per (attack, detecting defense, see :func:`detects`): the attack's true target (``y_target`` of
    the attack config recorded in the defense run, else in the attack run), the detected target, NC's flagged
    classes and whether the detection is right (detected = true target, and for NC the true target is
    flagged)."""
    cells = _index(results)
    attacks = _attacks(results, attacks)
    rows = []
    for defense in _defenses(results, defenses):
        if not detects(defense, [cells.get((a, defense)) for a in attacks]):
            continue
        for attack in attacks:
            metrics = cells.get((attack, defense)) or {}
            detection = metrics.get("detection") or {}
            true = _true_target(metrics, cells.get((attack, NO_DEFENSE)))
            detected, flagged = detection.get("target"), detection.get("flagged")
            correct = None
            if detected is not None and true is not None:
                correct = detected == true and (flagged is None or true in flagged)
            rows.append({"attack": attack, "defense": defense, "true target": true, "detected target": detected,
                         "flagged": flagged, "correct": correct})
    return rows


def _true_target(metrics: dict, attack_metrics: dict | None):
    for source in (metrics, attack_metrics or {}):
        target = (source.get("attack") or {}).get("y_target")
        if target is not None:
            return target
    return None


# -- the comparison -----------------------------------------------------------------------------------------

def _number(value, failed: bool = False, std=None) -> str:
    if value is None:
        return MISSING
    return f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else "") + (FAILED_MARK if failed else "")


def md_table(header: list[str], lines: list[list[str]], align: list[str]) -> list[str]:
    body = ["| " + " | ".join(cells) + " |" for cells in lines]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + body


def markdown(results, attacks=None, defenses=None, title: str = "", sources: dict | None = None) -> str:
    """The Markdown of the comparison: the BA/ASR table (a failing number gets a trailing ✗, a missing cell
    is —), the detection table where a defense detects, and the metrics.json each cell was read from."""
    cells = _index(results)
    rows = table_rows(results, attacks, defenses)
    columns = [NO_DEFENSE] + _defenses(results, defenses)
    header = ["Attack"] + [f"{c} {m}" for c in columns for m in ("BA", "ASR")]
    lines = []
    for row in rows:
        line = [row["attack"]]
        base = cells.get((row["attack"], NO_DEFENSE))
        for column in columns:
            metrics = cells.get((row["attack"], column))
            verdict = (failure(metrics, _reference_ba(metrics, base)) if column != NO_DEFENSE else None) or {}
            line += [_number(row[f"{column} BA"], verdict.get("ba", False), row.get(f"{column} BA std")),
                     _number(row[f"{column} ASR"], verdict.get("asr", False), row.get(f"{column} ASR std"))]
        lines.append(line)
    text = ([f"# {title}", ""] if title else []) + md_table(header, lines, ["---"] + ["---:"] * (len(header) - 1))
    text += ["", f"✗: the defense failed (ASR > {ASR_LIMIT:g} %, or BA more than {BA_DROP_LIMIT:g} points below "
                 f"the BA without defense). {MISSING}: no finished run."]
    detections = detection_rows(results, attacks, defenses)
    if detections:
        text += ["", "## Detection (target class)", ""]
        text += md_table(["Attack", "Defense", "True target", "Detected target", "Flagged", "Correct"],
                          [[r["attack"], r["defense"], _plain(r["true target"]), _plain(r["detected target"]),
                            _plain(r["flagged"]), _plain(r["correct"])] for r in detections],
                          ["---", "---", "---:", "---:", "---", "---"])
    if sources:
        text += ["", "## Sources", ""] + [f"- {a} / {d}: `{_shown(p)}`" for (a, d), p in sources.items()]
    return "\n".join(text) + "\n"


def _shown(path) -> str:
    """A path relative to the working directory when it lies below it (as the tables are read from the repo)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _plain(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return str(value)


def write_tables(results, stem, attacks=None, defenses=None, title: str = "",
                 sources: dict | None = None) -> list[Path]:
    """Writes ``<stem>.md``, ``<stem>.csv`` and, where a defense detects, ``<stem>_detection.csv``; returns
    the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, table = stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".csv")
    from .checkpoint import atomic_write  # noqa: PLC0415 - torch only once a table is written

    text = markdown(results, attacks, defenses, title, sources)
    atomic_write(md, lambda fh: fh.write(text.encode()))  # under torchrun: rank 0 alone
    write_csv(table_rows(results, attacks, defenses), table)
    written = [md, table]
    detections = detection_rows(results, attacks, defenses)
    if detections:
        written.append(stem.with_name(stem.name + "_detection.csv"))
        write_csv(detections, written[-1])
    return written


# -- the paper's Table 1 ------------------------------------------------------------------------------------

def percent(value) -> str:
    """A BA/ASR as the text tables show it: two decimals, "–" when the run has no such number."""
    return "–" if value is None else f"{value:.2f}"


def machine(folder) -> str:
    """The machine a run trained on: recorded in its metrics.json, or (older runs) read from the first line of
    its log.txt ("..., device cpu, ..."); "?" when neither says."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / "metrics.json").read_text()).get("device")
    except (OSError, ValueError):
        recorded = None
    if recorded:
        return str(recorded)
    try:
        with open(folder / "log.txt") as fh:
            first = fh.readline()
    except OSError:
        return "?"
    match = re.search(r"device (\S+?),", first)
    return match.group(1) if match else "?"


def table1_rows(results, sources: dict | None = None, attacks=None, defense: str = TABLE1_DEFENSE) -> list[dict]:
    """The paper's Table 1: one row of text cells per attack of ``attacks`` (default :data:`TABLE1_ATTACKS`,
    in that order) that has a finished attack run in ``results``: ``no defense BA/ASR``, ``<defense> BA/ASR``
    (empty without a finished ``defense`` run), ``BA drop``, ``machine`` (where the runs trained, read from the
    folders of ``sources``), ``attack run`` and ``<defense> run`` (the metrics.json paths, relative to the
    working folder). The numbers are :func:`table_rows`' cells of the comparison with the one column
    ``defense``."""
    cells, sources = _index(results), sources or {}
    found = [a for a in (attacks or TABLE1_ATTACKS) if ((cells.get((a, NO_DEFENSE)) or {}).get("final"))]
    rows = []
    for row in table_rows(results, found, [defense]):
        attack = row["attack"]
        before, after = row[f"{NO_DEFENSE} BA"], row[f"{defense} BA"]
        done = bool((cells.get((attack, defense)) or {}).get("final"))
        runs = [sources.get((attack, NO_DEFENSE)), sources.get((attack, defense)) if done else None]
        drop = f"{before - after:.2f}" if done and before is not None and after is not None else ""
        rows.append({"attack": attack,
                     "no defense BA": percent(before), "no defense ASR": percent(row[f"{NO_DEFENSE} ASR"]),
                     f"{defense} BA": percent(after) if done else "",
                     f"{defense} ASR": percent(row[f"{defense} ASR"]) if done else "",
                     "BA drop": drop,
                     "machine": " / ".join(ordered(machine(Path(p).parent) for p in runs if p)),
                     "attack run": os.path.relpath(runs[0]) if runs[0] else "",
                     f"{defense} run": os.path.relpath(runs[1]) if runs[1] else ""})
    return rows


# -- text and CSV -------------------------------------------------------------------------------------------

def format_table(rows: list[dict], markdown: bool = False) -> str:
    """Rows of text cells as an aligned plain-text table or a Markdown table (a ``run`` column goes last)."""
    if not rows:
        return "no finished runs found"
    keys = [k for k in rows[0] if k != "run"] + (["run"] if "run" in rows[0] else [])
    if markdown:
        return "\n".join(md_table(keys, [[r[k] for k in keys] for r in rows], ["---"] * len(keys)))
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return value


def write_csv(rows: list[dict], path) -> None:
    """Rows as CSV: floats as Python writes them (they read back equal), True/False, an empty missing cell,
    text as it is."""
    from .checkpoint import atomic_write  # noqa: PLC0415 - torch only once a table is written

    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["attack"])
    writer.writeheader()
    writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
    atomic_write(path, lambda fh: fh.write(out.getvalue().encode()))  # never half a table; rank 0 alone


def load_csv(path) -> list[dict]:
    """Reads a table written by :func:`write_csv` back (numbers as floats, True/False as bools, empty as None)."""
    def parse(value: str):
        if value in ("", "True", "False"):
            return {"": None, "True": True, "False": False}[value]
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value

    with open(path, newline="") as fh:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]
