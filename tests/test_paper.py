"""The paper's numbers (core/paper_numbers.yaml through core/paper.py): every table well formed, its names the
toolkit's, its settings values REFINE accepts, and at least one cell per table checked against the paper."""
import math

import pytest

from core import paper
from core.attacks import ATTACKS
from core.data import DATASETS
from core.defenses import DEFENSES
from core.models import MODELS, dataset_kind

# The paper's baselines the toolkit does not implement: their rows keep the paper's names.
PAPER_ONLY_DEFENSES = {"BDMAE", "ZIP", "UNICORN"}
# Settings of the paper's that the toolkit has no setting for (black-box surrogate, REFINE-aware attacker, CINIC-10).
PAPER_ONLY_KEYS = {"role", "attacker_knows_refine", "defender_data"}
NAME_KEYS = {"dataset", "model", "attack", "defense"}
REFINE_SETTINGS = DEFENSES["REFINE"].settings
PERCENT = {"BA", "ASR"}


def problems(table_id: str, table: dict) -> list[str]:
    """What is wrong with one table of the file, one line each (empty: nothing)."""
    found = []
    if not isinstance(table.get("caption"), str) or not table["caption"]:
        found.append(f"{table_id}: no caption")
    if not isinstance(table.get("section"), str) or not table["section"]:
        found.append(f"{table_id}: no section")
    rows = table.get("rows")
    if not isinstance(rows, list):
        return found + [f"{table_id}: rows is not a list"]
    if not rows and not table.get("missing"):
        found.append(f"{table_id}: no rows, and no `missing` saying why")
    settings_seen = set()
    for row in rows:
        where = f"{table_id} {row}"
        metrics = {k: v for k, v in row.items() if k in paper.METRICS}
        if not metrics:
            found.append(f"{where}: no metric")
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                found.append(f"{where}: {key} is not a number")
            elif key in PERCENT and not 0 <= value <= 100:
                found.append(f"{where}: {key} {value} is not a percentage")
            elif key == "overhead_minutes" and not value > 0:
                found.append(f"{where}: {key} {value} is not a duration")
        setting = tuple(sorted((k, v) for k, v in row.items() if k not in paper.METRICS))
        if setting in settings_seen:
            found.append(f"{where}: a second row with the same setting")
        settings_seen.add(setting)
        for key, value in row.items():
            if key in paper.METRICS or key in PAPER_ONLY_KEYS:
                continue
            if key == "dataset" and value not in DATASETS:
                found.append(f"{where}: unknown dataset {value!r}")
            elif key == "model" and (dataset_kind(row.get("dataset", "CIFAR10")), value) not in MODELS:
                found.append(f"{where}: no model {value!r} for {row.get('dataset')}")
            elif key == "attack" and value not in ATTACKS:
                found.append(f"{where}: unknown attack {value!r}")
            elif key == "defense" and value not in DEFENSES and value not in PAPER_ONLY_DEFENSES | {"none"}:
                found.append(f"{where}: unknown defense {value!r}")
            elif key not in NAME_KEYS:
                if key not in REFINE_SETTINGS:
                    found.append(f"{where}: {key!r} is neither a name, a metric nor a REFINE setting")
                elif "REFINE" not in row.get("defense", ""):
                    found.append(f"{where}: REFINE setting {key!r} on a row without REFINE")
                else:
                    try:
                        REFINE_SETTINGS[key].check.convert(value)
                    except Exception:
                        found.append(f"{where}: {key}={value!r} is not a value REFINE accepts")
    return found


def test_the_file_holds_the_papers_fourteen_tables_each_well_formed():
    assert paper.tables() == [f"table{i}" for i in range(1, 15)]
    found = [p for t in paper.tables() for p in problems(t, {**paper.describe(t), "rows": paper.rows(t)})]
    assert found == []


def test_the_checks_catch_a_broken_copy(tmp_path, monkeypatch):
    broken = tmp_path / "paper_numbers.yaml"
    text = paper.PATH.read_text(encoding="utf-8")
    broken.write_text(text.replace("BA: 90.43, ASR: 0.78}", "BA: 90.43, ASR: 107.8}", 1)
                      .replace("attack: WaNet, defense: T-MR", "attack: WaNets, defense: T-MR"), encoding="utf-8")
    monkeypatch.setattr(paper, "PATH", broken)
    found = [p for t in paper.tables() for p in problems(t, {**paper.describe(t), "rows": paper.rows(t)})]
    assert len(found) == 2
    assert "ASR 107.8 is not a percentage" in found[0] and "unknown attack 'WaNets'" in found[1]


# (table, the row's setting, BA, ASR) read off the paper; at least one per table that has numbers
SPOT_CHECKS = [
    ("table1", dict(dataset="CIFAR10", attack="BadNets", defense="none"), 91.24, 100),
    ("table1", dict(dataset="CIFAR10", attack="BadNets", defense="REFINE"), 90.43, 0.78),
    ("table1", dict(dataset="CIFAR10", attack="BATT", defense="ZIP"), 82.27, 98.89),
    ("table1", dict(dataset="ImageNet50", attack="LC", defense="REFINE"), 66.43, 0),
    ("table2", dict(dataset="ImageNet50", attack="Physical", defense="BTI-DBF-P"), 73.60, 7.60),
    ("table2", dict(dataset="CIFAR10", attack="Adaptive", defense="UNICORN"), 68.79, 9.59),
    ("table2", dict(dataset="ImageNet50", attack="Blended", defense="NC"), 62.68, 96.90),
    ("table3", dict(attack="Physical", defense="REFINE", remap=False), 92.86, 1.60),
    ("table3", dict(attack="BATT", defense="REFINE", lam=0), 88.82, 5.87),
    ("table3", dict(attack="Adaptive", defense="REFINE", remap=True, lam=0.1), 90.17, 0.27),
    ("table4", dict(dataset="ImageNet50", attacker_knows_refine=True, defense="REFINE"), 60.53, 1.09),
    ("table4", dict(dataset="CIFAR10", attacker_knows_refine=False, defense="none"), 91.74, 100),
    ("table5", dict(model="ViT", attack="LC", defense="REFINE"), 80.36, 1.60),
    ("table5", dict(model="DenseNet121", attack="BATT", defense="BDMAE"), 85.63, 100),
    ("table5", dict(model="VGG16", attack="BadNets", defense="none"), 86.47, 99.53),
    ("table6", dict(defense="none"), 92.31, 100),
    ("table6", dict(defense="REFINE", data_fraction=0.2), 83.93, 2.21),
    ("table8", dict(defense="REFINE", unet_channels=80), 91.07, 0.78),
    ("table9", dict(defense="REFINE", defender_data="CINIC10"), 88.39, 1.40),
    ("table10", dict(attack="WaNet", defense="T-MR"), 74.49, 25.76),
    ("table11", dict(attack="WaNet", role="black-box", defense="REFINE"), 87.44, 0.04),
    ("table11", dict(attack="WaNet", role="surrogate", defense="none"), 90.92, 99.84),
    ("table13", dict(defense="FT"), 91.89, 91.67),
    ("table13", dict(defense="FT+REFINE"), 90.42, 0.87),
    ("table14", dict(attack="Physical", defense="REFINE", data_fraction=0.1), 79.87, 2.34),
]


@pytest.mark.parametrize("table, keys, ba, asr", SPOT_CHECKS)
def test_spot_checks_against_the_paper(table, keys, ba, asr):
    row = paper.lookup(table, **keys)
    assert (row["BA"], row["ASR"]) == (ba, asr)


def test_every_table_with_numbers_is_spot_checked_and_the_rest_say_why():
    assert {t for t, *_ in SPOT_CHECKS} | {"table7", "table12"} == set(paper.tables())
    assert paper.rows("table7") == [] and paper.describe("table7")["missing"]
    assert paper.lookup("table12", defense="BTI-DBF-P")["overhead_minutes"] == 15.49
    assert paper.lookup("table12", defense="REFINE")["overhead_minutes"] == 36.70


def test_tables_1_and_2_share_their_no_defense_and_refine_columns():
    # the paper prints the same undefended models and the same REFINE runs in both
    def shared(table):
        return {(r["dataset"], r["attack"], r["defense"]): (r["BA"], r["ASR"])
                for r in paper.rows(table) if r["defense"] in ("none", "REFINE")}
    assert len(shared("table1")) == 28 and shared("table1") == shared("table2")


def test_lookup_names_the_table_and_keys_when_it_cannot_answer():
    with pytest.raises(LookupError, match=r"paper table1 has no row with dataset='CIFAR10', attack='Nope'"):
        paper.lookup("table1", dataset="CIFAR10", attack="Nope")
    with pytest.raises(LookupError, match=r"paper table3 has 3 rows with attack='BadNets', defense='REFINE'; "
                                          r"give also lam, remap"):
        paper.lookup("table3", attack="BadNets", defense="REFINE")
    with pytest.raises(LookupError, match=r"no table 'table15'"):
        paper.rows("table15")


def test_rows_are_copies():
    paper.rows("table13")[0]["BA"] = -1.0
    assert paper.lookup("table13", defense="none")["BA"] == 91.18
