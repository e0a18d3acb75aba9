"""Result tables are read from the runs' own files."""
import json

import yaml

from core.summary import find_runs, row, table1_runs
from core.tables import NO_DEFENSE, format_table, machine, markdown, table1_rows, table_rows


def fake_run(folder, final, no_defense=None, kind="embedded sample"):
    folder.mkdir(parents=True)
    metrics = {"final": final, "train_wall_seconds_this_call": 90.0, "attack": {"attack": "Blended"}}
    if no_defense:
        metrics["no_defense"] = no_defense
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(yaml.safe_dump({"preset": "mini", "attack": "Blended"}))
    (folder / "run.json").write_text(json.dumps({"settings": {"data": {"train": {"kind": kind}}}}))


def test_rows_come_from_metrics_and_unfinished_runs_are_skipped(tmp_path):
    fake_run(tmp_path / "attack" / "a", {"BA": 80.125, "ASR": 99.5})
    fake_run(tmp_path / "refine" / "r", {"BA": 70.0, "ASR": 2.25}, no_defense={"BA": 80.125, "ASR": 99.5}, kind="full")
    (tmp_path / "refine" / "unfinished").mkdir()
    (tmp_path / "refine" / "unfinished" / "metrics.json").write_text(json.dumps({"evaluations": []}))
    runs = find_runs([tmp_path / "attack", tmp_path / "refine"])
    assert [r.name for r in runs] == ["a", "r"]
    defense = row(runs[1])
    assert (defense["kind"], defense["attack"], defense["data"]) == ("defense", "Blended", "full")
    assert (defense["BA before"], defense["ASR before"], defense["BA"], defense["ASR"], defense["min"]) == (
        "80.12", "99.50", "70.00", "2.25", "1.5")
    assert row(runs[0])["data"] == "embedded sample" and row(runs[0])["kind"] == "attack"
    table = format_table([row(r) for r in runs], markdown=True)
    assert table.count("\n") == 3 and "| defense | Blended | mini | full | 80.12 | 99.50 | 70.00 | 2.25 |" in table


def test_table1_pairs_each_attack_run_with_refine_only(tmp_path):
    def run(folder, final, config, no_defense=None):
        folder.mkdir(parents=True)
        metrics = {"final": final, **({"no_defense": no_defense} if no_defense else {})}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "config.yaml").write_text(yaml.safe_dump({"preset": "mini", **config}))

    attack_run = tmp_path / "attack" / "CIFAR10" / "ResNet18" / "BadNets" / "mini_seed0_a"
    run(attack_run, {"BA": 81.6, "ASR": 99.98}, {"attack": "BadNets"})
    model = str(attack_run / "model.pth")
    run(tmp_path / "refine_res" / "r", {"BA": 74.22, "ASR": 2.86}, {"attack": "BadNets", "model_path": model},
        no_defense={"BA": 81.6, "ASR": 99.98})  # a REFINE run of an earlier version: no `defense` key
    run(tmp_path / "refine_res" / "z_ft", {"BA": 79.62, "ASR": 82.64},
        {"attack": "BadNets", "model_path": model, "defense": "FT"}, no_defense={"BA": 81.6, "ASR": 99.98})
    [row] = table1_rows(*table1_runs([tmp_path / "attack", tmp_path / "refine_res"], preset="mini"))
    assert (row["REFINE BA"], row["REFINE ASR"], row["BA drop"]) == ("74.22", "2.86", "7.38")


def test_machine_comes_from_metrics_or_from_an_older_runs_log(tmp_path):
    attack_run = tmp_path / "attack" / "CIFAR10" / "ResNet18" / "LC" / "mini_seed0_a"
    fake_run(attack_run, {"BA": 84.5, "ASR": 90.8})
    (attack_run / "config.yaml").write_text(yaml.safe_dump({"preset": "mini", "attack": "LC"}))
    (attack_run / "log.txt").write_text("[2026-11-28 04:13:07] attack.py: LC on CIFAR10 / ResNet18 (width 16), "
                                        "device cuda, output attack/...\n")
    defense_run = tmp_path / "refine_res" / "r"
    fake_run(defense_run, {"BA": 72.5, "ASR": 2.6}, no_defense={"BA": 84.5, "ASR": 90.8})
    metrics = json.loads((defense_run / "metrics.json").read_text())
    (defense_run / "metrics.json").write_text(json.dumps({**metrics, "device": "cpu (2 threads)"}))
    (defense_run / "config.yaml").write_text(yaml.safe_dump(
        {"preset": "mini", "attack": "LC", "model_path": str(attack_run / "model.pth")}))
    assert machine(attack_run) == "cuda" and machine(defense_run) == "cpu (2 threads)"
    assert machine(tmp_path) == "?"
    [table_row] = table1_rows(*table1_runs([tmp_path], preset="mini"))
    assert table_row["machine"] == "cuda / cpu (2 threads)"


def test_table1_is_the_comparison_with_the_refine_column(tmp_path):
    """Table 1 and compare.py's table come from the same cells: the REFINE column of a comparison of the same
    runs (with other defenses beside it) holds Table 1's numbers."""
    attack_run = tmp_path / "attack" / "CIFAR10" / "ResNet18" / "WaNet" / "mini_seed0_a"
    fake_run(attack_run, {"BA": 81.71, "ASR": 99.69})
    (attack_run / "config.yaml").write_text(yaml.safe_dump({"preset": "mini", "attack": "WaNet"}))
    refine_run = tmp_path / "refine_res" / "r"
    fake_run(refine_run, {"BA": 74.47, "ASR": 3.031}, no_defense={"BA": 81.71, "ASR": 99.69})
    (refine_run / "config.yaml").write_text(yaml.safe_dump(  # this version's config.yaml: nested by section
        {"run": {"preset": "mini", "model_path": str(attack_run / "model.pth")},
         "method": {"attack": "WaNet", "defense": "REFINE"}}))
    results, sources = table1_runs([tmp_path], preset="mini")
    [t1] = table1_rows(results, sources)
    assert t1["REFINE run"].endswith("r/metrics.json"), "the nested config.yaml paired the REFINE run"
    ft = ("WaNet", "FT", {"final": {"BA": 80.0, "ASR": 50.0}, "no_defense": {"BA": 81.71, "ASR": 99.69}})
    comparison = results + [ft]
    [cells] = table_rows(comparison, defenses=["FT", "REFINE"])
    for column, name in ((NO_DEFENSE, "no defense"), ("REFINE", "REFINE")):
        for metric in ("BA", "ASR"):
            assert t1[f"{name} {metric}"] == f"{cells[f'{column} {metric}']:.2f}"
    assert (t1["REFINE BA"], t1["REFINE ASR"], t1["BA drop"]) == ("74.47", "3.03", "7.24")
    line = next(l for l in markdown(comparison, defenses=["FT", "REFINE"]).splitlines() if l.startswith("| WaNet"))
    assert line.endswith("| 81.71 | 99.69 | 80.00 | 50.00 ✗ | 74.47 | 3.03 |")
