"""The job behind ``compare.py``: attacks × defenses, each cell a run of attack.py's or defend.py's job, and
the tables of the paper's Tables 1-2 built from the runs' ``metrics.json`` files (never typed by hand).

:func:`compare` runs what is missing (each attack's model first, then each defense of it); the jobs reuse
finished runs and resume unfinished ones by themselves. :func:`table_only_results` runs nothing and picks the
newest matching finished runs instead. :func:`write_tables` turns ``(attack, defense, metrics)`` triples into
a Markdown file and CSV files; it needs no training, so tests call it directly.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml

from .attacks import attack_class
from .cli import value_type
from .config import CONFIG_DIR, preset_path, resolve
from .defenses import DEFENSES, defense_class
from .errors import UserError
from .run_attack import DEFAULTS as ATTACK_DEFAULTS, attack_root, run_attack
from .run_defense import defaults_for, defense_root, run_defense
from .runlog import read_latest, read_metrics, read_run_record
from .validate import validate

NO_DEFENSE = "No Defense"
MISSING = "—"
FAILED_MARK = " ✗"
ASR_LIMIT = 10.0  # a defense fails when its ASR is above this (%) ...
BA_DROP_LIMIT = 10.0  # ... or its BA is more than this many points below the no-defense BA
DETECTING = ("BTI-DBF-P", "BTI-DBF-U", "NC")  # defenses that name a target class (their `detection`)
# compare.py's options that every job gets where it accepts them (attack_dir is attack.py's --out)
SHARED = ("dataset", "model", "preset", "device", "seed", "data_root", "allow_embedded", "test_size")


# -- the tables ---------------------------------------------------------------------------------------------

def _label(defense) -> str:
    return NO_DEFENSE if defense in (None, NO_DEFENSE) else defense


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def _index(results) -> dict:
    """``{(attack, defense label): metrics}`` of the triples; a later triple replaces an earlier one."""
    return {(attack, _label(defense)): metrics for attack, defense, metrics in results}


def failure(metrics: dict | None, reference_ba: float | None) -> dict:
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


def table_rows(results, attacks=None, defenses=None) -> list[dict]:
    """One CSV-ready row per attack: ``attack``, ``No Defense BA/ASR`` and for each defense ``<D> BA``,
    ``<D> ASR`` and ``<D> failed`` (floats and bools as read; None for a missing cell).

    ``results``: ``(attack, defense, metrics)`` triples; ``defense`` None (or "No Defense") for the attack
    run's metrics.json (its ``final``), else a defense run's metrics.json (``final``, ``no_defense``); metrics
    None: no finished run. ``attacks``/``defenses``: row and column order (default: as they first appear).
    """
    cells = _index(results)
    attacks = _ordered(attacks or [a for a, _, _ in results])
    defenses = _ordered(defenses or [_label(d) for _, d, _ in results if _label(d) != NO_DEFENSE])
    rows = []
    for attack in attacks:
        base = cells.get((attack, NO_DEFENSE))
        final = (base or {}).get("final") or {}
        row = {"attack": attack, f"{NO_DEFENSE} BA": final.get("BA"), f"{NO_DEFENSE} ASR": final.get("ASR")}
        for defense in defenses:
            metrics = cells.get((attack, defense))
            after = (metrics or {}).get("final") or {}
            verdict = failure(metrics, _reference_ba(metrics, base))
            row.update({f"{defense} BA": after.get("BA"), f"{defense} ASR": after.get("ASR"),
                        f"{defense} failed": None if verdict is None else verdict["failed"]})
        rows.append(row)
    return rows


def detection_rows(results, attacks=None, defenses=None) -> list[dict]:
    """One row per (attack, detecting defense): the attack's true target (``y_target`` of the attack config
    recorded in the defense run, else in the attack run), the detected target, NC's flagged classes and
    whether the detection is right (detected = true target, and for NC the true target is flagged).
    A defense detects when it is one of :data:`DETECTING` or its metrics hold ``detection['target']``."""
    cells = _index(results)
    attacks = _ordered(attacks or [a for a, _, _ in results])
    defenses = _ordered(defenses or [_label(d) for _, d, _ in results if _label(d) != NO_DEFENSE])
    detecting = [d for d in defenses if d in DETECTING or any(
        "target" in ((cells.get((a, d)) or {}).get("detection") or {}) for a in attacks)]
    rows = []
    for defense in detecting:
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


def _number(value, failed: bool = False) -> str:
    return MISSING if value is None else f"{value:.2f}" + (FAILED_MARK if failed else "")


def _md_table(header: list[str], lines: list[list[str]], align: list[str]) -> list[str]:
    body = ["| " + " | ".join(cells) + " |" for cells in lines]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + body


def markdown(results, attacks=None, defenses=None, title: str = "", sources: dict | None = None) -> str:
    """The Markdown of the comparison: the BA/ASR table (a failing number gets a trailing ✗, a missing cell
    is —), the detection table where a defense detects, and the metrics.json each cell was read from
    (``sources``: ``{(attack, defense label): path}``)."""
    cells = _index(results)
    rows = table_rows(results, attacks, defenses)
    columns = [NO_DEFENSE] + _ordered(defenses or [_label(d) for _, d, _ in results if _label(d) != NO_DEFENSE])
    header = ["Attack"] + [f"{c} {m}" for c in columns for m in ("BA", "ASR")]
    lines = []
    for row in rows:
        line = [row["attack"]]
        base = cells.get((row["attack"], NO_DEFENSE))
        for column in columns:
            metrics = cells.get((row["attack"], column))
            verdict = (failure(metrics, _reference_ba(metrics, base)) if column != NO_DEFENSE else None) or {}
            line += [_number(row[f"{column} BA"], verdict.get("ba", False)),
                     _number(row[f"{column} ASR"], verdict.get("asr", False))]
        lines.append(line)
    text = ([f"# {title}", ""] if title else []) + _md_table(header, lines, ["---"] + ["---:"] * (len(header) - 1))
    text += ["", f"✗: the defense failed (ASR > {ASR_LIMIT:g} %, or BA more than {BA_DROP_LIMIT:g} points below "
                 f"the BA without defense). {MISSING}: no finished run."]
    detections = detection_rows(results, attacks, defenses)
    if detections:
        text += ["", "## Detection (target class)", ""]
        text += _md_table(["Attack", "Defense", "True target", "Detected target", "Flagged", "Correct"],
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


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return value


def write_csv(rows: list[dict], path) -> None:
    """Rows as CSV: floats as Python writes them (they read back equal), True/False, an empty missing cell."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["attack"])
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)


def write_tables(results, stem, attacks=None, defenses=None, title: str = "",
                 sources: dict | None = None) -> list[Path]:
    """Writes ``<stem>.md``, ``<stem>.csv`` and, where a defense detects, ``<stem>_detection.csv``; returns
    the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, table = stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".csv")
    md.write_text(markdown(results, attacks, defenses, title, sources))
    write_csv(table_rows(results, attacks, defenses), table)
    written = [md, table]
    detections = detection_rows(results, attacks, defenses)
    if detections:
        written.append(stem.with_name(stem.name + "_detection.csv"))
        write_csv(detections, written[-1])
    return written


# -- the jobs -----------------------------------------------------------------------------------------------

def _given(opts: argparse.Namespace, key: str, default=None):
    return getattr(opts, key, default)


def job_preset(task: str, preset: str | None) -> str | None:
    """The preset a job of ``task`` reads: ``preset`` (paper when none), or None (the built-in defaults, which
    are the paper's) for a defense that has no paper preset file; another missing preset is a UserError."""
    preset = preset or "paper"
    if preset == "paper" and not (CONFIG_DIR / task / "paper.yaml").is_file():
        return None
    preset_path(task, preset)  # raises a one-line error naming the presets there are
    return preset


def attack_config(opts: argparse.Namespace, attack: str) -> dict:
    """attack.py's configuration for ``attack`` with the shared options (``attack_dir`` as its ``out``) and
    ``attack_config`` as its --config."""
    ns = argparse.Namespace(**{k: getattr(opts, k) for k in SHARED if k in opts}, attack=attack)
    ns.preset = job_preset("attack", _given(opts, "preset"))
    if "attack_dir" in opts:
        ns.out = opts.attack_dir
    if "attack_config" in opts:
        ns.config = opts.attack_config
    return resolve("attack", ATTACK_DEFAULTS, ns)


def defense_config(opts: argparse.Namespace, attack: str, defense: str) -> dict:
    """defend.py's configuration for ``defense`` of ``attack``'s model, with the shared options,
    ``defense_dir`` as its --out and ``defense_config`` as its --config."""
    cls = defense_class(defense)
    ns = argparse.Namespace(**{k: getattr(opts, k) for k in SHARED if k in opts}, attack=attack, defense=cls.name)
    ns.preset = job_preset(cls.preset_task, _given(opts, "preset"))
    for key, option in (("attack_dir", "attack_dir"), ("defense_dir", "out"), ("defense_config", "config")):
        if key in opts:
            setattr(ns, option, getattr(opts, key))
    return resolve(cls.preset_task, defaults_for(cls.name), ns)


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``--sweep`` text ``SETTING=V1,V2,...`` -> (setting with underscores, [value texts])."""
    key, sep, values = str(text).partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    values = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not values:
        raise UserError(f"--sweep takes SETTING=V1,V2,... (e.g. pad_size=0,2,4), got {text!r}")
    return key, values


def variants(defenses: list[str], sweep: str | None) -> list[tuple[str, str, dict]]:
    """The table's defense columns: ``(label, defense, overrides)``; with ``sweep`` (``SETTING=V1,V2``) one
    column per value for each defense that has the setting (label ``"ShrinkPad pad_size=2"``), the others
    once. A setting none of ``defenses`` has is a UserError."""
    if not sweep:
        return [(d, d, {}) for d in defenses]
    key, values = parse_sweep(sweep)
    owners = [d for d in defenses if key in defaults_for(d)]
    if not owners:
        raise UserError(f"--sweep {key} is not a setting of {', '.join(defenses)}; see defend.py --list and "
                        f"docs/flags.md")
    columns = []
    for defense in defenses:
        if defense not in owners:
            columns.append((defense, defense, {}))
            continue
        kind = value_type(defaults_for(defense)[key])
        for value in values:
            try:
                typed = kind(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                raise UserError(f"--sweep {key}: {value!r} is not a valid value (expected {kind.__name__})") from None
            columns.append((f"{defense} {key}={value}", defense, {key: typed}))
    return columns


def plan(opts: argparse.Namespace) -> tuple[list[str], list[str], dict]:
    """The canonical attack names, the defense columns (:func:`variants`) and every job's configuration,
    checked before anything runs: an unknown name, preset, option or swept value is one UserError.
    Returns (attacks, column labels, {(attack, label): config})."""
    attacks = _ordered(attack_class(a).name for a in opts.attacks)
    columns = variants(_ordered(defense_class(d).name for d in opts.defenses), _given(opts, "sweep"))
    configs = {}
    for attack in attacks:
        configs[(attack, NO_DEFENSE)] = config = attack_config(opts, attack)
        validate("attack", config)
        for label, defense, overrides in columns:
            config = {**defense_config(opts, attack, defense), **overrides}
            validate("defense", config, extra_rules=DEFENSES[defense].checks)
            configs[(attack, label)] = config
    return attacks, [label for label, _, _ in columns], configs


def _finished_metrics(folder: Path | None):
    """(metrics, path of metrics.json) of a finished run folder; (None, None) otherwise."""
    if folder is None:
        return None, None
    metrics = read_metrics(folder)
    return (metrics, folder / "metrics.json") if metrics.get("final") else (None, None)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _summary(metrics: dict) -> str:
    final = metrics["final"]
    asr = f", ASR {final['ASR']:.2f}" if final.get("ASR") is not None else ""
    return f"BA {final['BA']:.2f}{asr}"


def compare(opts: argparse.Namespace, log=print) -> tuple[list, dict, list[str]]:
    """Runs every cell of the comparison that is not finished yet: for each attack attack.py's job, then
    each defense's job on that model. A cell whose job fails (UserError) is reported in one line and left
    empty; the others go on. ``opts.skip_missing``: no attack model is trained; each attack's defenses
    defend attack.py's latest finished model, and an attack without one is skipped.

    Returns (``(attack, defense, metrics)`` triples, ``{(attack, label): metrics.json path}``, failed cells).
    """
    attacks, defenses, configs = plan(opts)
    results, sources, failed = [], {}, []
    total, step = len(configs), 0
    for attack in attacks:
        step += 1
        config = configs[(attack, NO_DEFENSE)]
        if _given(opts, "skip_missing"):
            metrics, path = _finished_metrics(read_latest(attack_root(config)))
            log(f"[{step}/{total}] {attack} / {NO_DEFENSE}: " + (
                f"{_summary(metrics)} (latest finished model, {path.parent})" if metrics else
                "no finished model, skipped with its defenses (--skip-missing)"))
        else:
            log(f"[{step}/{total}] {attack} / {NO_DEFENSE}: attack.py job")
            metrics, path = _run_cell(lambda: run_attack(config), lambda: attack_root(config), attack, NO_DEFENSE,
                                      log, failed)
        results.append((attack, None, metrics))
        if path:
            sources[(attack, NO_DEFENSE)] = path
        for defense in defenses:
            step += 1
            if metrics is None:
                log(f"[{step}/{total}] {attack} / {defense}: skipped (no model of {attack} to defend)")
                results.append((attack, defense, None))
                continue
            config = configs[(attack, defense)]
            log(f"[{step}/{total}] {attack} / {defense}: defense job")
            cell, cell_path = _run_cell(lambda: run_defense(config), lambda: defense_root(config), attack, defense,
                                        log, failed)
            results.append((attack, defense, cell))
            if cell_path:
                sources[(attack, defense)] = cell_path
    return results, sources, failed


def _run_cell(job, root, attack: str, label: str, log, failed: list):
    """Runs one job; (metrics, metrics.json path) of the run it finished or found, read back from its folder
    (``root()/latest``); (None, None) with a one-line report when it fails."""
    try:
        job()
    except UserError as exc:
        log(f"    {attack} / {label}: failed: {_one_line(exc)}")
        failed.append(f"{attack}/{label}")
        return None, None
    metrics, path = _finished_metrics(read_latest(root()))
    if metrics is None:
        log(f"    {attack} / {label}: the job ended without a finished run under {root()}")
        failed.append(f"{attack}/{label}")
        return None, None
    log(f"    {attack} / {label}: {_summary(metrics)} ({path})")
    return metrics, path


# -- --table-only: the runs already there -------------------------------------------------------------------

def _read_config(folder: Path) -> dict:
    try:
        return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def finished_runs(root: Path, product: str) -> list[Path]:
    """Finished run folders directly below ``root`` (run.json says finished, ``product`` and final metrics
    exist), the ``latest`` one first, then newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for folder in root.iterdir():
        if folder.is_symlink() or not folder.is_dir() or not (folder / product).is_file():
            continue
        try:
            record = read_run_record(folder)
        except UserError:
            continue
        if record and record.get("finished") and read_metrics(folder).get("final"):
            runs.append(folder.resolve())
    latest = read_latest(root)
    runs.sort(key=lambda f: (f != latest, -(f / "metrics.json").stat().st_mtime))
    return runs


def _plain_value(value):
    return list(value) if isinstance(value, tuple) else value  # YAML gives back a tuple as a list


def _matches(folder: Path, config: dict, opts: argparse.Namespace, values: dict) -> bool:
    """A run of the same preset as ``config`` (and of ``opts.seed`` when given) that recorded ``values`` (the
    method's own settings: ShrinkPad's ``pad_size``, an attack's ``poisoned_rate``...): a run made with another
    pad size or trigger is not this cell."""
    saved = _read_config(folder)
    return (saved.get("preset") == config.get("preset") and ("seed" not in opts or saved.get("seed") == opts.seed)
            and all(_plain_value(saved.get(k)) == _plain_value(v) for k, v in values.items()))


RECIPE = ("model", "width", "epochs", "batch_size", "lr", "schedule", "augment", "label_smoothing")


def _attack_values(config: dict) -> dict:
    """What an attack run must have recorded to be this cell: the training recipe and the attack's own
    settings (an unset one takes the attack's default; one the attack derives at run time, such as WaNet's
    grid size or LC's clean model, is not compared)."""
    cls = attack_class(config["attack"])
    values = {k: config[k] for k in RECIPE if k in config}
    values.update(attack=cls.name, y_target=config.get("y_target"),
                  poisoned_rate=cls.default_poisoned_rate if config.get("poisoned_rate") is None
                  else config["poisoned_rate"])
    for key, setting in cls.settings.items():
        value = setting.default if config.get(key) is None else config[key]
        if value is not None and key != "benign_model":
            values[key] = value
    return values


def table_only_results(opts: argparse.Namespace, log=print) -> tuple[list, dict, list[str]]:
    """The comparison from runs already finished, running nothing: for each attack the newest finished
    attack.py run of the same preset (and seed, if given) and attack settings, for each defense the newest
    finished run of it with the same settings that defended that very model (its ``model_path`` lies in the
    attack run's folder). Missing cells stay empty. Returns what :func:`compare` returns (no failed cells)."""
    attacks, defenses, configs = plan(opts)
    results, sources = [], {}
    for attack in attacks:
        config = configs[(attack, NO_DEFENSE)]
        runs = [f for f in finished_runs(attack_root(config), "model.pth")
                if _matches(f, config, opts, _attack_values(config))]
        model_run = runs[0] if runs else None
        metrics, path = _finished_metrics(model_run)
        results.append((attack, None, metrics))
        if path:
            sources[(attack, NO_DEFENSE)] = path
        log(f"{attack} / {NO_DEFENSE}: " + (f"{_summary(metrics)} ({path})" if metrics else MISSING))
        for defense in defenses:
            config = configs[(attack, defense)]
            runs = [f for f in finished_runs(defense_root(config), "defended_model.pth")
                    if _matches(f, config, opts, {k: config[k] for k in DEFENSES[config["defense"]].defaults})
                    and (model_run is None or _defended(f) == model_run)]
            metrics, path = _finished_metrics(runs[0] if runs else None)
            results.append((attack, defense, metrics))
            if path:
                sources[(attack, defense)] = path
            log(f"{attack} / {defense}: " + (f"{_summary(metrics)} ({path})" if metrics else MISSING))
    return results, sources, []


def _defended(folder: Path) -> Path | None:
    """The run folder of the model a defense run defended (from its config.yaml's ``model_path``)."""
    path = _read_config(folder).get("model_path")
    return Path(path).resolve().parent if path else None


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
