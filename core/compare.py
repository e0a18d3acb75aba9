"""The job behind ``compare.py``: attacks × defenses, each cell a run of attack.py's or defend.py's job.

:func:`compare` runs what is missing (each attack's model first, then each defense of it); the jobs reuse
finished runs and resume unfinished ones by themselves. :func:`table_only_results` runs nothing and picks the
newest matching finished runs instead. Both return ``(attack, defense, metrics)`` triples read from the runs'
``metrics.json``; :mod:`core.tables` lays them out (the paper's Tables 1-2) and writes the Markdown and CSV.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path


from .adaptive_attack import SUFFIX, split_name, without_adaptive
from .attacks import attack_class
from .config import CONFIG_DIR, preset_path, resolve
from .defenses import defense_class
from .errors import UserError
from .jobs import validate_job
from .launch import make_executor, run_wave
from .run_attack import AttackJob, attack_job_settings, attack_root, run_attack
from .run_defense import DefenseJob, defaults_for, defense_job_settings, run_defense
from .runlog import finished_run_matches, latest_run, read_latest, read_metrics, read_run_record
from .settings import check_value, defaults
from .tables import MISSING, NO_DEFENSE, ordered as _ordered

# compare.py's options that every job gets where it accepts them (attack_dir is attack.py's --out)
SHARED = ("dataset", "model", "preset", "device", "seed", "data_root", "allow_embedded", "test_size")


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


def canonical_attack(attack: str) -> str:
    """The registry name of an attack (``PhysicalBA`` -> ``Physical``), keeping the adaptive variant's suffix
    (``BadNets-adaptive``: the model of attack.py's ``--adaptive-gamma``, core.adaptive_attack)."""
    base, adaptive = split_name(attack)
    return attack_class(base).name + (SUFFIX if adaptive else "")


def attack_config(opts: argparse.Namespace, attack: str) -> dict:
    """attack.py's configuration for ``attack`` with the shared options (``attack_dir`` as its ``out``) and
    ``attack_config`` as its --config. ``<ATTACK>-adaptive`` is the adaptive attack of ``<ATTACK>`` with
    ``opts.adaptive_gamma`` (default 1.0, the preset's fine-tuning)."""
    base, adaptive = split_name(attack)
    ns = argparse.Namespace(**{k: getattr(opts, k) for k in SHARED if k in opts}, attack=base)
    if adaptive:
        ns.adaptive_gamma = _given(opts, "adaptive_gamma") or 1.0
    ns.preset = job_preset("attack", _given(opts, "preset"))
    if "attack_dir" in opts:
        ns.out = opts.attack_dir
    if "attack_config" in opts:
        ns.config = opts.attack_config
    return resolve("attack", defaults(attack_job_settings()), ns)


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


SWEEP_EXCLUDED = ("attack", "dataset", "model", "model_path")  # a cell's row, not a column's setting


def _setting_named(text: str, settings: dict):
    """(key, Setting) of the setting a --sweep names by its key or one of its flags (``tlabel`` is ``y_target``):
    a setting of what the defense computes, not of how the run goes (section ``run``) or of the table's rows."""
    settings = {k: s for k, s in settings.items() if s.section != "run" and k not in SWEEP_EXCLUDED}
    if text in settings:
        return text, settings[text]
    flags = {"--" + text, "--" + text.replace("_", "-")}
    return next(((k, s) for k, s in settings.items() if flags & {s.flag(k), *s.aliases}), None)


def _typed(key: str, setting, value: str):
    try:
        typed = setting.check.parse(value) if setting.check is not None else value
    except (TypeError, ValueError):
        typed = value  # the check names what is allowed
    try:
        return check_value(key, setting, typed)
    except UserError as exc:
        raise UserError(f"--sweep {key}: {value!r} is not a valid value ({exc})") from None


def variants(defenses: list[str], sweep) -> list[tuple[str, str, dict]]:
    """The table's defense columns: ``(label, defense, overrides)``. ``sweep``: one ``SETTING=V1,V2`` text or
    several; each defense that has a swept setting gets one column per value (label ``"ShrinkPad pad_size=2"``),
    per combination of values where it has several (``"REFINE lam=0.1 unet_channels=32"``), the others one
    column. A setting none of ``defenses`` has, or one swept twice, is a UserError."""
    sweeps = [] if not sweep else [sweep] if isinstance(sweep, str) else list(sweep)
    if not sweeps:
        return [(d, d, {}) for d in defenses]
    parsed = [parse_sweep(text) for text in sweeps]
    owned = {d: [] for d in defenses}  # defense -> [(key, setting, value texts)] of the sweeps it has
    keys = []
    for text, values in parsed:
        found = {d: _setting_named(text, defense_job_settings(defense_class(d))) for d in defenses}
        owners = [d for d, hit in found.items() if hit is not None]
        key = found[owners[0]][0] if owners else text
        if not owners:
            raise UserError(f"--sweep {key} is not a setting of {', '.join(defenses)}; see defend.py --list and "
                            f"docs/flags.md")
        if key in keys:
            raise UserError(f"--sweep {key} is given twice; give each setting once with all its values")
        keys.append(key)
        for d in owners:
            owned[d].append((key, found[d][1], values))
    columns = []
    for defense in defenses:
        if not owned[defense]:
            columns.append((defense, defense, {}))
            continue
        choices = [[(key, value, _typed(key, setting, value)) for value in values]
                   for key, setting, values in owned[defense]]
        for combination in itertools.product(*choices):
            label = defense + "".join(f" {key}={value}" for key, value, _ in combination)
            columns.append((label, defense, {key: typed for key, _, typed in combination}))
    return columns


def plan(opts: argparse.Namespace) -> tuple[list[str], list[str], dict]:
    """The canonical attack names, the defense columns (:func:`variants`) and every job's configuration,
    checked before anything runs: an unknown name, preset, option or swept value is one UserError.
    ``opts.columns``, when given, replaces ``opts.defenses`` and ``opts.sweep``.
    Returns (attacks, column labels, {(attack, label): config})."""
    attacks = _ordered(canonical_attack(a) for a in opts.attacks)
    columns = _given(opts, "columns")  # reproduce.py's items name their columns: (label, defense, overrides)
    if columns is None:
        columns = variants(_ordered(defense_class(d).name for d in opts.defenses), _given(opts, "sweep"))
    configs = {}
    for attack in attacks:
        configs[(attack, NO_DEFENSE)] = config = attack_config(opts, attack)
        validate_job(config, attack_job_settings())
        for label, defense, overrides in columns:
            config = {**defense_config(opts, attack, defense), **overrides}
            validate_job(config, defense_job_settings(defense_class(defense)))
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
    """Runs every cell of the comparison that is not finished yet: for each attack attack.py's job (after the
    job of its ``reference_attack``, e.g. Benign before LC, when that has no finished run), then each defense's
    job on the model that very job made. A cell whose job fails (UserError) is reported in one line and left
    empty; the others go on. ``opts.skip_missing``: no attack model is trained; each attack's defenses defend
    attack.py's latest finished model of the preset, and an attack without one is skipped.

    Returns (``(attack, defense, metrics)`` triples, ``{(attack, label): metrics.json path}``, failed cells).
    ``opts.launcher`` other than local: the cells run as submitit jobs (:func:`compare_launched`).
    """
    executor = make_executor(opts)
    if executor is not None:
        return compare_launched(executor, opts, log)
    attacks, defenses, configs = plan(opts)
    results, sources, failed = [], {}, []
    total, step = len(configs), 0
    for attack in attacks:
        step += 1
        config = configs[(attack, NO_DEFENSE)]
        if _given(opts, "skip_missing"):
            folder = read_latest(attack_root(config), config.get("preset") or "custom")
            metrics, path = _finished_metrics(folder)
            log(f"[{step}/{total}] {attack} / {NO_DEFENSE}: " + (
                f"{_summary(metrics)} (latest finished model, {path.parent})" if metrics else
                "no finished model, skipped with its defenses (--skip-missing)"))
        else:
            reference = _reference_of(attack)
            if reference and reference not in attacks and not _reference_ready(config, reference):
                log(f"[{step}/{total}] {attack} needs a {reference} model first: attack.py job of {reference}")
                _run_cell(lambda: run_attack(attack_config(opts, reference)), reference, NO_DEFENSE, log, failed)
            log(f"[{step}/{total}] {attack} / {NO_DEFENSE}: attack.py job")
            metrics, path = _run_cell(lambda: run_attack(config), attack, NO_DEFENSE, log, failed)
        results.append((attack, None, metrics))
        if path:
            sources[(attack, NO_DEFENSE)] = path
        for defense in defenses:
            step += 1
            if metrics is None:
                log(f"[{step}/{total}] {attack} / {defense}: skipped (no model of {attack} to defend)")
                results.append((attack, defense, None))
                continue
            config = {**configs[(attack, defense)], "model_path": str(path.parent / "model.pth")}
            log(f"[{step}/{total}] {attack} / {defense}: defense job")
            cell, cell_path = _run_cell(lambda: run_defense(config), attack, defense, log, failed)
            results.append((attack, defense, cell))
            if cell_path:
                sources[(attack, defense)] = cell_path
    return results, sources, failed


def compare_launched(executor, opts: argparse.Namespace, log=print) -> tuple[list, dict, list[str]]:
    """:func:`compare` with every cell a job of ``executor`` (core.launch), in ordered waves: the missing
    reference models (Benign before LC), the attacks, then the defenses of every attack model that finished.
    Returns what :func:`compare` returns."""
    attacks, defenses, configs = plan(opts)
    if _given(opts, "skip_missing"):
        raise UserError("--skip-missing defends the models already there: use it with --launcher local")
    failed = []
    references = {}
    for attack in attacks:
        reference = _reference_of(attack)
        if reference and reference not in attacks and not _reference_ready(configs[(attack, NO_DEFENSE)], reference):
            references[reference] = attack_config(opts, reference)
    if references:
        log(f"wave 1: the reference model(s) {', '.join(references)}")
        for label, outcome in run_wave(executor, [(r, "attack", c) for r, c in references.items()], log).items():
            if not isinstance(outcome, Path):
                failed.append(f"{label}/{NO_DEFENSE}")
    log(f"wave {1 + bool(references)}: {len(attacks)} attack job(s)")
    models = run_wave(executor, [(a, "attack", configs[(a, NO_DEFENSE)]) for a in attacks], log)
    results, sources, cells, made = [], {}, [], {}
    for attack in attacks:
        made[attack] = metrics, path = _job_metrics(models[attack])
        if metrics is None:
            failed.append(f"{attack}/{NO_DEFENSE}")
        else:
            sources[(attack, NO_DEFENSE)] = path
            cells += [(f"{attack} / {defense}", "defense",
                       {**configs[(attack, defense)], "model_path": str(path.parent / "model.pth")})
                      for defense in defenses]
    if cells:
        log(f"wave {2 + bool(references)}: {len(cells)} defense job(s)")
    defended = run_wave(executor, cells, log) if cells else {}
    for attack in attacks:
        results.append((attack, None, made[attack][0]))
        for defense in defenses:
            outcome = defended.get(f"{attack} / {defense}")
            metrics, path = _job_metrics(outcome)
            if outcome is not None and metrics is None:
                failed.append(f"{attack}/{defense}")
            if path:
                sources[(attack, defense)] = path
            results.append((attack, defense, metrics))
    return results, sources, failed


def _job_metrics(outcome):
    """(metrics, metrics.json path) of a job's run folder; (None, None) for a failed job (its reason, a str)."""
    return _finished_metrics(outcome) if isinstance(outcome, Path) else (None, None)


def _reference_of(attack: str) -> str | None:
    """The attack whose model ``attack`` (or its adaptive variant) needs first, e.g. Benign for LC."""
    return attack_class(split_name(attack)[0]).reference_attack


def _reference_ready(config: dict, reference: str) -> bool:
    normal = without_adaptive(config)  # the reference is a normal run
    return latest_run(attack_root({**normal, "attack": reference}), config.get("preset"), "model.pth") is not None


def _run_cell(job, attack: str, label: str, log, failed: list):
    """Runs one job; (metrics, metrics.json path) of the run folder it returns (finished now or before);
    (None, None) with a one-line report when it fails."""
    try:
        folder = job()
    except UserError as exc:
        log(f"    {attack} / {label}: failed: {_one_line(exc)}")
        failed.append(f"{attack}/{label}")
        return None, None
    metrics, path = _finished_metrics(folder)
    if metrics is None:
        log(f"    {attack} / {label}: the job ended without a finished run in {folder}")
        failed.append(f"{attack}/{label}")
        return None, None
    log(f"    {attack} / {label}: {_summary(metrics)} ({path})")
    return metrics, path


# -- --table-only: the runs already there -------------------------------------------------------------------

def _planned_run(job) -> tuple[Path | None, str]:
    """The folder of a finished run of exactly the settings the job would run (every resolved setting, the data
    found, the trigger and model files' hashes, the methods' versions: the folder is named by their hash), and
    why there is none."""
    try:
        job.plan()  # checks and loads only: writes nothing
    except UserError as exc:
        return None, _one_line(exc)
    matches, reason = finished_run_matches(job.folder, job.settings, job.product)
    if matches:
        return job.folder, ""
    siblings = sorted((p for p in Path(job.folder).parent.glob("*_seed*_*") if p.is_dir() and not p.is_symlink()),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    for sibling in siblings:
        try:
            finished = (read_run_record(sibling) or {}).get("finished")
        except UserError:  # a damaged run.json: not a run to compare with
            continue
        if finished:
            _, why = finished_run_matches(sibling, job.settings, job.product)
            return None, f"no finished run of these settings; the newest other run, {sibling.name}, differs: {why}"
    return None, reason or "no finished run of these settings"


def table_only_results(opts: argparse.Namespace, log=print) -> tuple[list, dict, list[str]]:
    """The comparison from runs already finished, running nothing: a cell is the finished run whose recorded
    settings equal, in full, those its job would run now (for a defense: of the attack cell's very model), so a
    run of another recipe, data, trigger or method version is never taken. Missing cells stay empty, and the
    log says why. Returns what :func:`compare` returns (no failed cells)."""
    attacks, defenses, configs = plan(opts)
    results, sources = [], {}
    for attack in attacks:
        folder, why = _planned_run(AttackJob(configs[(attack, NO_DEFENSE)]))
        metrics, path = _finished_metrics(folder)
        results.append((attack, None, metrics))
        if path:
            sources[(attack, NO_DEFENSE)] = path
        log(f"{attack} / {NO_DEFENSE}: " + (f"{_summary(metrics)} ({path})" if metrics else f"{MISSING} ({why})"))
        for defense in defenses:
            metrics = path_ = None
            if folder is not None:
                config = {**configs[(attack, defense)], "model_path": str(folder / "model.pth")}
                cell, why = _planned_run(DefenseJob(config))
                metrics, path_ = _finished_metrics(cell)
            else:
                why = f"no {attack} model"
            results.append((attack, defense, metrics))
            if path_:
                sources[(attack, defense)] = path_
            log(f"{attack} / {defense}: " + (f"{_summary(metrics)} ({path_})" if metrics else f"{MISSING} ({why})"))
    return results, sources, []


# -- --seeds: each cell over several seeds --------------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    # sample standard deviation (n - 1): the spread a reader expects of "mean ± std over seeds"
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return round(mean, 2), round(var ** 0.5, 2)


def over_seeds(results_by_seed: dict) -> list:
    """``{seed: [(attack, defense, metrics)]}`` -> one triple per cell whose ``final`` (and ``no_defense``) hold
    the mean BA/ASR over the seeds that have the cell, with ``BA_std``/``ASR_std`` and ``seeds`` (how many)."""
    cells: dict = {}
    for results in results_by_seed.values():
        for attack, defense, metrics in results:
            cells.setdefault((attack, defense), []).append(metrics)
    merged = []
    for (attack, defense), runs in cells.items():
        runs = [m for m in runs if m and (m.get("final") or {}).get("BA") is not None]
        if not runs:
            merged.append((attack, defense, None))
            continue
        metrics = {}
        for part in ("final", "no_defense"):
            parts = [m[part] for m in runs if m.get(part)]
            if not parts:
                continue
            summary = {"seeds": len(parts)}
            for key in ("BA", "ASR"):
                values = [p[key] for p in parts if p.get(key) is not None]
                if values:
                    summary[key], summary[f"{key}_std"] = _mean_std(values)
            metrics[part] = summary
        merged.append((attack, defense, metrics))
    return merged


def run_over_seeds(run, opts: argparse.Namespace, seeds, log=print) -> tuple[list, dict, list[str]]:
    """``run`` (:func:`compare` or :func:`table_only_results`) once per seed, the cells merged by
    :func:`over_seeds`; sources and failed cells are labelled with their seed. Every seed is checked first."""
    seeds = list(dict.fromkeys(seeds))
    for seed in seeds:
        check_value("seed", attack_job_settings()["seed"], seed)
    by_seed, sources, failed = {}, {}, []
    for seed in seeds:
        log(f"== seed {seed}")
        by_seed[seed], seed_sources, seed_failed = run(argparse.Namespace(**{**vars(opts), "seed": seed}), log=log)
        sources.update({(attack, f"{label} (seed {seed})"): path for (attack, label), path in seed_sources.items()})
        failed += [f"{cell} (seed {seed})" for cell in seed_failed]
    return over_seeds(by_seed), sources, failed
