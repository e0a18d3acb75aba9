"""Table matching: compare.py --table-only fills a cell only from a finished run whose resolved settings equal, in
full, those its job would run - a run of another poisoning rate, training-set size or test size is not that cell -
and --sweep names settings, typed, never run options."""
import pytest

import compare
from conftest import write_tree
from core.errors import UserError
from core.tables import NO_DEFENSE, load_csv


def test_table_only_takes_no_run_of_other_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_tree(tmp_path / "data", per_class=4)
    (tmp_path / "attack.yaml").write_text("epochs: 1\nwidth: 4\n")
    argv = ["--attacks", "BadNets", "--defenses", "ShrinkPad", "--preset", "mini", "--device", "cpu",
            "--data-root", str(tmp_path / "data"), "--test-size", "20", "--attack-dir", str(tmp_path / "attack"),
            "--defense-dir", str(tmp_path / "defense")]

    def table(*extra, attack_config="epochs: 1\nwidth: 4\n"):
        (tmp_path / "attack.yaml").write_text(attack_config)
        compare.main([*argv, *extra, "--attack-config", str(tmp_path / "attack.yaml"),
                      "--out-table", str(tmp_path / "t")])
        row = load_csv(tmp_path / "t.csv")[0]
        return row[f"{NO_DEFENSE} BA"], row["ShrinkPad BA"]

    ran = table()
    assert None not in ran
    capsys.readouterr()
    assert table("--table-only") == ran  # the same settings: the same runs
    assert table("--table-only", "--test-size", "30") == (None, None)
    assert table("--table-only", attack_config="epochs: 1\nwidth: 4\npoisoned_rate: 0.2\n") == (None, None)
    assert table("--table-only", attack_config="epochs: 1\nwidth: 4\ntrain_size: 30\n") == (None, None)
    assert table("--table-only", "--seed", "1") == (None, None)


def test_sweep_takes_a_setting_by_its_official_flag_and_refuses_what_is_no_setting():
    from core.compare import variants

    columns = variants(["ShrinkPad"], "tlabel=5")  # the official spelling of y_target; typed, not a string
    assert columns == [("ShrinkPad y_target=5", "ShrinkPad", {"y_target": 5})]
    with pytest.raises(UserError, match="--sweep defense is not a setting of ShrinkPad"):
        variants(["ShrinkPad"], "defense=FT")
    with pytest.raises(UserError, match="--sweep device is not a setting"):
        variants(["ShrinkPad"], "device=cpu,cuda")
