"""compare.py: the table builder (core.tables, no training) and a tiny end-to-end comparison on synthetic data."""
import json
from pathlib import Path

import pytest
import yaml

import compare
import core.compare
from conftest import write_tree
from core.errors import UserError
from core.runlog import read_latest
from core.tables import NO_DEFENSE, detection_rows, load_csv, markdown, table_rows, write_tables
from core.settings import flatten


def _final(ba, asr, total=1000):
    return {"BA": ba, "ASR": asr, "BA_correct": round(ba * total / 100), "BA_total": total,
            "ASR_hits": round(asr * 9), "ASR_total": 900}


def _defense_run(ba, asr, detection=None, no_defense_ba=90.0, target=0):
    return {"no_defense": _final(no_defense_ba, 100.0), "final": _final(ba, asr), "detection": detection or {},
            "attack": {"attack": "BadNets", "y_target": target}}


RESULTS = [
    ("BadNets", None, {"final": _final(90.0, 100.0)}),
    ("BadNets", "FT", _defense_run(85.0, 10.5)),                 # ASR above 10: failed
    ("BadNets", "ShrinkPad", _defense_run(80.5, 9.9)),           # ASR 9.9, BA drop 9.5: not failed
    ("BadNets", "NC", _defense_run(79.5, 1.0, {"target": 0, "flagged": [0]})),  # BA drop 10.5: failed
    ("Blended", None, {"final": _final(88.25, 99.5)}),
    ("Blended", "FT", _defense_run(87.0, 3.0, no_defense_ba=88.25, target=3)),
    ("Blended", "ShrinkPad", None),                              # no finished run
    ("Blended", "NC", _defense_run(88.0, 2.0, {"target": 5, "flagged": []}, no_defense_ba=88.25, target=3)),
]


def test_table_marks_failed_defenses_and_missing_cells(tmp_path):
    rows = {r["attack"]: r for r in table_rows(RESULTS)}
    bad = rows["BadNets"]
    assert (bad["FT failed"], bad["ShrinkPad failed"], bad["NC failed"]) == (True, False, True)
    assert rows["Blended"]["FT failed"] is False and rows["Blended"]["ShrinkPad failed"] is None
    text = markdown(RESULTS, title="t")
    line = next(l for l in text.splitlines() if l.startswith("| BadNets"))
    assert "| 85.00 | 10.50 ✗ | 80.50 | 9.90 | 79.50 ✗ | 1.00 |" in line  # the failing number is marked
    blended = next(l for l in text.splitlines() if l.startswith("| Blended"))
    assert "| — | — |" in blended and "✗" not in blended
    assert "## Detection" in text and "| BadNets | NC | 0 | 0 | 0 | yes |" in text
    assert "| Blended | NC | 3 | 5 | none | no |" in text

    md, table, detection = write_tables(RESULTS, tmp_path / "t", title="t")
    assert md.read_text() == text
    back = {r["attack"]: r for r in load_csv(table)}
    for attack, row in rows.items():
        assert back[attack] == row  # the same numbers, bools and missing cells
    assert list(back["BadNets"])[:5] == ["attack", f"{NO_DEFENSE} BA", f"{NO_DEFENSE} ASR", "FT BA", "FT ASR"]
    found = load_csv(detection)
    assert [(r["attack"], r["defense"], r["true target"], r["detected target"], r["correct"]) for r in found] == [
        ("BadNets", "NC", 0, 0, True), ("Blended", "NC", 3, 5, False)]


def test_a_defense_that_detects_gets_detection_rows_without_being_listed(monkeypatch):
    """Whether a column has a detection table comes from its class (``detects_target``), not from a list of
    names: a registered defense that says so gets its rows even with no finished run (a missing cell), one
    that does not gets none; a label that is no registered defense (a swept column) detects when its metrics
    hold a detected target."""
    from core.defenses import DEFENSES, defense_class

    results = [("BadNets", None, {"final": _final(90.0, 100.0), "attack": {"y_target": 0}}),
               ("BadNets", "ShrinkPad", None), ("BadNets", "FT", _defense_run(85.0, 1.0)),
               ("BadNets", "NC pad=1", _defense_run(85.0, 1.0, {"target": 0}))]
    assert [r["defense"] for r in detection_rows(results)] == ["NC pad=1"]
    assert not defense_class("ShrinkPad").detects_target
    monkeypatch.setattr(DEFENSES["ShrinkPad"], "detects_target", True)
    rows = detection_rows(results)
    assert [(r["defense"], r["true target"], r["detected target"], r["correct"]) for r in rows] == [
        ("ShrinkPad", 0, None, None), ("NC pad=1", 0, 0, True)]
    assert "| BadNets | ShrinkPad | 0 | — | — | — |" in markdown(results)


def test_unknown_names_are_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="unknown defense 'Nope'"):
        compare.main(["--attacks", "BadNets", "--defenses", "FT", "Nope"])
    with pytest.raises(UserError, match="unknown attack 'Nope'"):
        compare.main(["--attacks", "Nope", "--defenses", "FT"])
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        compare.main(["--attacks", "BadNets", "--defenses", "FT", "--preset", "huge"])
    assert not any(tmp_path.iterdir())


def _tree_state(root: Path) -> dict:
    """Every file below ``root`` (links as their target) with its modification time."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns if not p.is_symlink() else str(p.readlink()))
            for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_compare_end_to_end_runs_once_and_reads_the_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # any default output path lands in tmp_path
    write_tree(tmp_path / "data", per_class=4)
    (tmp_path / "attack.yaml").write_text("epochs: 1\nwidth: 4\neval_every: 1\n")
    (tmp_path / "defense.yaml").write_text("FT:\n  ft_epochs: 1\n")
    argv = ["--dataset", "CIFAR10", "--attacks", "BadNets", "--defenses", "ShrinkPad", "FT",
            "--preset", "mini", "--device", "cpu", "--data-root", str(tmp_path / "data"), "--test-size", "20",
            "--attack-dir", str(tmp_path / "attack"), "--defense-dir", str(tmp_path / "defense"),
            "--attack-config", str(tmp_path / "attack.yaml"), "--defense-config", str(tmp_path / "defense.yaml"),
            "--out-table", str(tmp_path / "tables" / "cmp")]
    compare.main(argv)
    first = capsys.readouterr().out
    assert "[3/3] BadNets / FT: defense job" in first
    rows = {r["attack"]: r for r in load_csv(tmp_path / "tables" / "cmp.csv")}
    text = (tmp_path / "tables" / "cmp.md").read_text()
    assert not (tmp_path / "tables" / "cmp_detection.csv").exists()  # neither defense detects
    for attack in ("BadNets",):
        run = read_latest(tmp_path / "attack" / "CIFAR10" / "ResNet18" / attack)
        final = json.loads((run / "metrics.json").read_text())["final"]
        assert (rows[attack][f"{NO_DEFENSE} BA"], rows[attack][f"{NO_DEFENSE} ASR"]) == (final["BA"], final["ASR"])
        assert f"`{(run / 'metrics.json').relative_to(tmp_path.resolve())}`" in text
        for defense in ("ShrinkPad", "FT"):
            folder = read_latest(tmp_path / "defense" / "CIFAR10" / "ResNet18" / attack / defense)
            metrics = json.loads((folder / "metrics.json").read_text())
            assert (rows[attack][f"{defense} BA"], rows[attack][f"{defense} ASR"]) == (
                metrics["final"]["BA"], metrics["final"]["ASR"])
            assert f"{metrics['final']['BA']:.2f}" in text
            assert metrics["attack"]["y_target"] == 0
    ft = flatten(yaml.safe_load((read_latest(tmp_path / "defense/CIFAR10/ResNet18/BadNets/FT") / "config.yaml").read_text()))
    assert ft["ft_epochs"] == 1 and ft["preset"] == "mini"  # the defense config's FT section reached the FT job

    before = _tree_state(tmp_path / "attack") | _tree_state(tmp_path / "defense")
    compare.main(argv)  # everything is finished: nothing is trained or rewritten
    second = capsys.readouterr().out
    assert second.count("already finished") == 3
    after = _tree_state(tmp_path / "attack") | _tree_state(tmp_path / "defense")
    assert after == before
    assert {r["attack"]: r for r in load_csv(tmp_path / "tables" / "cmp.csv")} == rows

    only = [a for a in argv if a != "--out-table" and not a.endswith("cmp")]
    compare.main(only + ["--table-only", "--out-table", str(tmp_path / "tables" / "only")])
    assert "already finished" not in capsys.readouterr().out
    assert {r["attack"]: r for r in load_csv(tmp_path / "tables" / "only.csv")} == rows
    assert _tree_state(tmp_path / "attack") | _tree_state(tmp_path / "defense") == before

    def failing(config):  # a job that fails: reported in one line, the other cells go on
        if config["defense"] == "FT":
            raise UserError("boom\nsecond line")
        return real(config)

    real = core.compare.run_defense
    monkeypatch.setattr(core.compare, "run_defense", failing)
    with pytest.raises(UserError, match=r"1 job\(s\) failed \(BadNets/FT\)"):
        compare.main(argv)
    assert "BadNets / FT: failed: boom second line" in capsys.readouterr().out
    row = load_csv(tmp_path / "tables" / "cmp.csv")[0]
    assert row["FT BA"] is None and row["ShrinkPad BA"] == rows["BadNets"]["ShrinkPad BA"]


def test_skip_missing_trains_no_attack_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    compare.main(["--attacks", "BadNets", "--defenses", "FT", "--preset", "mini", "--skip-missing",
                  "--attack-dir", str(tmp_path / "attack"), "--out-table", str(tmp_path / "t")])
    out = capsys.readouterr().out
    assert "no finished model, skipped with its defenses (--skip-missing)" in out
    assert "BadNets / FT: skipped" in out
    assert load_csv(tmp_path / "t.csv") == [{"attack": "BadNets", f"{NO_DEFENSE} BA": None, f"{NO_DEFENSE} ASR": None,
                                             "FT BA": None, "FT ASR": None, "FT failed": None}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"]


def test_sweep_gives_one_column_per_value_and_table_only_finds_each(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_tree(tmp_path / "data", per_class=4)
    (tmp_path / "attack.yaml").write_text("epochs: 1\nwidth: 4\neval_every: 1\n")
    argv = ["--dataset", "CIFAR10", "--attacks", "BadNets", "--defenses", "ShrinkPad", "--sweep", "pad_size=0,3",
            "--preset", "mini", "--device", "cpu", "--data-root", str(tmp_path / "data"), "--test-size", "20",
            "--attack-dir", str(tmp_path / "attack"), "--defense-dir", str(tmp_path / "defense"),
            "--attack-config", str(tmp_path / "attack.yaml")]
    compare.main(argv + ["--out-table", str(tmp_path / "sweep")])
    row = load_csv(tmp_path / "sweep.csv")[0]
    runs = sorted((tmp_path / "defense" / "CIFAR10" / "ResNet18" / "BadNets" / "ShrinkPad").glob("mini_*"))
    sizes = sorted(flatten(yaml.safe_load((r / "config.yaml").read_text()))["pad_size"] for r in runs)
    assert sizes == [0, 3]  # one run per value
    # pad 0 changes no image: the same predictions as without defense
    assert row["ShrinkPad pad_size=0 BA"] == row[f"{NO_DEFENSE} BA"]
    assert row["ShrinkPad pad_size=3 BA"] is not None and "ShrinkPad BA" not in row
    capsys.readouterr()
    compare.main(argv + ["--table-only", "--out-table", str(tmp_path / "only")])
    assert load_csv(tmp_path / "only.csv")[0] == row
    only = (tmp_path / "only.md").read_text()
    for run in runs:  # each column is read from the run of its own value
        size = flatten(yaml.safe_load((run / "config.yaml").read_text()))["pad_size"]
        assert f"BadNets / ShrinkPad pad_size={size}: `{(run / 'metrics.json').relative_to(tmp_path.resolve())}`" in only

    plain = [a for a in argv if a not in ("--sweep", "pad_size=0,3")]
    compare.main(plain + ["--table-only", "--out-table", str(tmp_path / "default")])
    default = load_csv(tmp_path / "default.csv")[0]
    assert default["ShrinkPad BA"] is None, "no run of the default pad size (4): the cell stays empty"
    assert default[f"{NO_DEFENSE} BA"] == row[f"{NO_DEFENSE} BA"]
    (tmp_path / "attack.yaml").write_text("epochs: 2\nwidth: 4\neval_every: 1\n")  # another recipe: not that run
    compare.main(plain + ["--table-only", "--out-table", str(tmp_path / "other")])
    assert load_csv(tmp_path / "other.csv")[0][f"{NO_DEFENSE} BA"] is None

    with pytest.raises(UserError, match="--sweep lam is not a setting of ShrinkPad"):
        compare.main(["--attacks", "BadNets", "--defenses", "ShrinkPad", "--sweep", "lam=0.1"])
    with pytest.raises(UserError, match="'x' is not a valid value"):
        compare.main(["--attacks", "BadNets", "--defenses", "ShrinkPad", "--sweep", "pad_size=2,x"])
    with pytest.raises(UserError, match="SETTING=V1,V2"):
        compare.main(["--attacks", "BadNets", "--defenses", "ShrinkPad", "--sweep", "pad_size"])


def test_several_sweeps_give_one_column_per_combination_for_the_defenses_that_have_them():
    columns = core.compare.variants(["REFINE", "ShrinkPad", "FT"], ["lam=0.1,1", "unet_channels=16,32", "pad_size=2"])
    labels = {label: overrides for label, _, overrides in columns}
    assert list(labels) == ["REFINE lam=0.1 unet_channels=16", "REFINE lam=0.1 unet_channels=32",
                            "REFINE lam=1 unet_channels=16", "REFINE lam=1 unet_channels=32",
                            "ShrinkPad pad_size=2", "FT"]
    assert labels["REFINE lam=1 unet_channels=32"] == {"lam": 1.0, "unet_channels": 32}  # typed by the declarations
    assert core.compare.variants(["ShrinkPad"], "pad_size=0,3") == [  # one text, as before
        ("ShrinkPad pad_size=0", "ShrinkPad", {"pad_size": 0}), ("ShrinkPad pad_size=3", "ShrinkPad", {"pad_size": 3})]
    with pytest.raises(UserError, match="given twice"):
        core.compare.variants(["ShrinkPad"], ["pad_size=0", "pad-size=2"])
    with pytest.raises(UserError, match="not a valid value"):
        core.compare.variants(["REFINE"], ["lam=0.1", "unet_channels=0"])


def test_cells_over_seeds_show_mean_and_sample_std_and_a_missing_seed_counts_once_less():
    by_seed = {0: [("BadNets", None, {"final": _final(80.0, 99.0)}), ("BadNets", "REFINE", _defense_run(70.0, 2.0))],
               1: [("BadNets", None, {"final": _final(82.0, 100.0)}), ("BadNets", "REFINE", _defense_run(74.0, 4.0))],
               2: [("BadNets", None, {"final": _final(84.0, 98.0)}), ("BadNets", "REFINE", None)]}
    merged = {(a, d): m for a, d, m in core.compare.over_seeds(by_seed)}
    base, refine = merged[("BadNets", None)]["final"], merged[("BadNets", "REFINE")]["final"]
    assert (base["BA"], base["BA_std"], base["seeds"]) == (82.0, 2.0, 3)
    assert (refine["BA"], refine["BA_std"], refine["ASR"], refine["seeds"]) == (72.0, 2.83, 3.0, 2)
    text = markdown(core.compare.over_seeds(by_seed), defenses=["REFINE"])
    assert "82.00 ± 2.00" in text and "72.00 ± 2.83" in text
    row = table_rows(core.compare.over_seeds(by_seed), defenses=["REFINE"])[0]
    assert row["REFINE BA std"] == 2.83 and row["REFINE seeds"] == 2


def test_an_adaptive_row_runs_the_adaptive_attack_and_defends_its_own_model():
    import argparse
    opts = argparse.Namespace(attacks=["badnets-adaptive", "BadNets"], defenses=["REFINE"], preset="mini",
                              adaptive_gamma=0.5)
    attacks, _, configs = core.compare.plan(opts)
    assert attacks == ["BadNets-adaptive", "BadNets"]
    adaptive, normal = configs[("BadNets-adaptive", NO_DEFENSE)], configs[("BadNets", NO_DEFENSE)]
    assert (adaptive["attack"], adaptive["adaptive_gamma"]) == ("BadNets", 0.5)
    assert normal["adaptive_gamma"] is None and normal["attack"] == "BadNets"
    assert core.compare.attack_root(adaptive).name == "BadNets-adaptive" != core.compare.attack_root(normal).name
    assert configs[("BadNets-adaptive", "REFINE")]["attack"] == "BadNets-adaptive"  # its own refine_res folder
