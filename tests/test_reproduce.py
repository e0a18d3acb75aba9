"""reproduce.py: the items (one per table and figure of the paper), their tables with the paper's numbers beside
ours, and a tiny item run end to end on synthetic data."""
import json
from pathlib import Path

import pytest

from conftest import one_line_refusal, run_main, write_tree
from core.reproduce import ITEMS, Column, Item, table_rows
from core.tables import load_csv


def test_list_names_every_table_and_figure(capsys):
    code, out, _ = run_main("reproduce", ["--list"], capsys)
    assert code == 0
    for n in range(1, 15):
        assert f"table{n} " in out
    for figure in ("figure2", "figure5", "figure6", "figure9"):
        assert figure in out
    assert "BadNets-adaptive" in out  # Table 4's adaptive attack row


@pytest.mark.parametrize("argv, says", [(["table99"], "unknown item 'table99'"),
                                        (["table9"], "table9 needs --defense-data-root"),
                                        ([], "name an item"),
                                        (["table4", "--attacks", "WaNet"], "--attacks: WaNet not among table4's")])
def test_unknown_or_unbuilt_items_are_refused_in_one_line(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    err = one_line_refusal("reproduce", argv + ["--preset", "mini"], capsys, tmp_path)
    assert says in err


def test_the_table_shows_the_papers_number_beside_ours_and_the_difference():
    item = ITEMS["table1"]
    results = {("CIFAR10", "ResNet18"): [("BadNets", None, {"final": {"BA": 81.5, "ASR": 99.9}}),
                                         ("BadNets", "REFINE", {"final": {"BA": 80.0, "ASR": 2.5}})]}
    rows = {(r["attack"], r["defense"]): r for r in table_rows(item, results, {})}
    refine = rows[("BadNets", "REFINE")]
    assert (refine["BA"], refine["BA paper"], refine["BA diff"]) == (80.0, 90.43, -10.43)
    assert (refine["ASR"], refine["ASR paper"], refine["ASR diff"]) == (2.5, 0.78, 1.72)
    assert rows[("BadNets", "No Defense")]["BA paper"] == 91.24
    bdmae = rows[("BadNets", "BDMAE (not implemented)")]  # the paper's baseline we lack: its numbers, not ours
    assert not bdmae["implemented"] and bdmae["BA"] is None and bdmae["BA paper"] == 89.53
    assert rows[("Blended", "ShrinkPad")]["BA"] is None and rows[("Blended", "ShrinkPad")]["BA paper"] == 83.95


def test_table4_compares_the_adaptive_attacks_rows_with_the_papers_adaptive_column():
    results = {("CIFAR10", "ResNet18"): [("BadNets", None, {"final": {"BA": 81.0, "ASR": 99.9}}),
                                         ("BadNets-adaptive", None, {"final": {"BA": 75.0, "ASR": 99.0}}),
                                         ("BadNets-adaptive", "REFINE", {"final": {"BA": 74.0, "ASR": 2.0}})]}
    rows = {(r["attack"], r["defense"]): r for r in table_rows(ITEMS["table4"], results, {})}
    assert rows[("BadNets", "No Defense")]["BA paper"] == 91.74  # the paper's normal attack
    assert rows[("BadNets", "REFINE")]["BA paper"] == 90.71
    assert rows[("BadNets-adaptive", "No Defense")]["BA paper"] == 84.53  # and its adaptive attack
    assert (rows[("BadNets-adaptive", "REFINE")]["BA paper"], rows[("BadNets-adaptive", "REFINE")]["BA diff"]) == \
        (83.05, -9.05)


def test_an_item_runs_its_grid_once_and_tables_the_runs_beside_the_paper(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_tree(tmp_path / "data", per_class=4)
    (tmp_path / "attack.yaml").write_text("epochs: 1\nwidth: 4\neval_every: 1\n")
    # ShrinkPad trains nothing: a fast stand-in for a table's defense column, compared with Table 1's ShrinkPad
    tiny = Item("tiny", "a tiny grid", "table1", ("BadNets",),
                (Column("ShrinkPad", {"pad_size": 2}, {"defense": "ShrinkPad"}), Column(None, paper_name="ZIP")))
    monkeypatch.setitem(ITEMS, "tiny", tiny)
    argv = ["tiny", "--preset", "mini", "--device", "cpu", "--data-root", str(tmp_path / "data"), "--test-size", "20",
            "--attack-dir", str(tmp_path / "attack"), "--defense-dir", str(tmp_path / "defense"),
            "--attack-config", str(tmp_path / "attack.yaml"), "--out-table", str(tmp_path / "out" / "tiny")]
    code, out, err = run_main("reproduce", argv, capsys)
    assert code == 0, err
    rows = {r["defense"]: r for r in load_csv(tmp_path / "out" / "tiny.csv")}
    shrink = rows["ShrinkPad pad_size=2"]
    metrics = json.loads(Path(shrink["metrics"]).read_text())
    final = metrics["final"]
    # every run records its inference speed, undefended and defended (the overhead table reads it)
    assert metrics["inference"]["defended"]["images"] == final["BA_total"] + final["ASR_total"] == 20 + 18
    assert metrics["inference"]["no_defense"]["images_per_second"] > 0
    attack_metrics = json.loads(Path(rows["No Defense"]["metrics"]).read_text())
    assert attack_metrics["inference"]["model"]["seconds_per_10000"] > 0
    assert (shrink["BA"], shrink["BA paper"]) == (final["BA"], 84.51)
    assert shrink["BA diff"] == pytest.approx(final["BA"] - 84.51, abs=0.01)
    assert rows["ZIP"]["BA paper"] == 81.95 and rows["ZIP"]["BA"] is None
    text = (tmp_path / "out" / "tiny.md").read_text()
    assert "84.51" in text and "Table 1" in text and "`mini` preset" in text
    assert f"Read over the preset: `--attack-config {tmp_path / 'attack.yaml'}`." in text  # not the preset alone
    # the same command again runs nothing; --table-only finds the same runs
    code, out, _ = run_main("reproduce", argv, capsys)
    assert code == 0 and out.count("already finished") == 2
    code, _, _ = run_main("reproduce", argv[:-1] + [str(tmp_path / "out" / "only"), "--table-only"], capsys)
    assert code == 0 and load_csv(tmp_path / "out" / "only.csv") == load_csv(tmp_path / "out" / "tiny.csv")


def test_the_overhead_table_reads_training_time_and_inference_speed_from_the_runs():
    item = ITEMS["table12"]
    refine = {"final": {"BA": 80.0}, "train_wall_seconds_this_call": 1500.0,
              "inference": {"no_defense": {"seconds_per_10000": 9.0}, "defended": {"seconds_per_10000": 21.5}}}
    results = {("CIFAR10", "ResNet18"): [("BadNets", None, {"final": {"BA": 81.0}}), ("BadNets", "REFINE", refine)]}
    rows = {r["defense"]: r for r in table_rows(item, results, {})}
    assert rows["REFINE"]["train minutes"] == 25.0 and rows["REFINE"]["train minutes paper"] == 36.70
    assert rows["REFINE"]["inference s / 10k images"] == 21.5
    assert rows["BTI-DBF-P"]["train minutes paper"] == 15.49 and rows["BTI-DBF-P"]["train minutes"] is None


def test_attacks_narrows_an_item_to_the_rows_asked_for_and_says_which_are_left_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["table1", "--preset", "mini", "--table-only", "--attacks", "WaNet", "BadNets", "--attack-dir",
            str(tmp_path / "attack"), "--defense-dir", str(tmp_path / "defense"), "--out-table", str(tmp_path / "t1")]
    code, out, err = run_main("reproduce", argv, capsys)
    assert code == 0, err
    rows = load_csv(tmp_path / "t1.csv")
    assert [r["attack"] for r in rows if r["defense"] == "No Defense"] == ["BadNets", "WaNet"]  # the item's order
    assert rows[0]["BA paper"] == 91.24 and rows[0]["BA"] is None  # no run: the paper's number, ours missing
    text = (tmp_path / "t1.md").read_text()
    assert "Rows left out by --attacks: Blended, Physical, BATT, LC, Adaptive." in text


def test_table8_at_the_mini_scale_runs_the_papers_width_ratios_beside_the_papers_widths():
    mini = ITEMS["table8"].for_preset("mini")
    assert [c.overrides["unet_channels"] for c in mini.columns] == [8, 12, 16, 20]  # the mini UNet has 16, not 64
    assert [c.overrides["unet_channels"] for c in ITEMS["table8"].for_preset("paper").columns] == [32, 48, 64, 80]
    results = {("CIFAR10", "ResNet18"): [("BadNets", mini.columns[0].name, {"final": {"BA": 70.0, "ASR": 3.0}})]}
    rows = {r["defense"]: r for r in table_rows(mini, results, {})}
    narrowest = rows["REFINE unet_channels=8 (the paper's 32)"]
    assert (narrowest["BA"], narrowest["BA paper"], narrowest["ASR paper"]) == (70.0, 89.49, 1.09)
    assert rows["REFINE unet_channels=20 (the paper's 80)"]["BA paper"] == 91.07
