"""The REFINE paper's own numbers (Tables 1-14), as transcribed in ``core/paper_numbers.yaml``: for printing the
paper's value beside ours. A row is one setting's cells, e.g. ``{'dataset': 'CIFAR10', 'model': 'ResNet18',
'attack': 'BadNets', 'defense': 'REFINE', 'BA': 90.43, 'ASR': 0.78}``; the file's header says what each key means.

    lookup("table1", dataset="CIFAR10", attack="BadNets", defense="REFINE")["ASR"]   # 0.78
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

PATH = Path(__file__).with_name("paper_numbers.yaml")
METRICS = ("BA", "ASR", "overhead_minutes")  # the keys that hold numbers; all others name the setting


@lru_cache(maxsize=None)
def _load(path: Path) -> dict:
    # keyed by path (read once each) so that a test can point PATH at a copy
    return yaml.safe_load(path.read_text(encoding="utf-8"))["tables"]


def _table(table: str) -> dict:
    tables = _load(PATH)
    if table not in tables:
        raise LookupError(f"the paper has no table {table!r}; known: {', '.join(tables)}")
    return tables[table]


def tables() -> list[str]:
    """The tables' ids ("table1" ... "table14"), in the paper's order."""
    return list(_load(PATH))


def describe(table: str) -> dict:
    """A table's caption, section and (where its cells could not be transcribed) ``missing``: why not."""
    return {k: v for k, v in _table(table).items() if k != "rows"}


def rows(table: str) -> list[dict]:
    """A table's rows (copies), in the file's order."""
    return [dict(row) for row in _table(table)["rows"]]


def lookup(table: str, **keys) -> dict:
    """The one row of ``table`` whose values equal all of ``keys``; a LookupError naming the table and the keys
    when none or several match (then also the keys that tell the matches apart)."""
    matches = [row for row in rows(table) if all(k in row and row[k] == v for k, v in keys.items())]
    if len(matches) == 1:
        return matches[0]
    wanted = ", ".join(f"{k}={v!r}" for k, v in keys.items()) or "no keys"
    if not matches:
        raise LookupError(f"paper {table} has no row with {wanted}")
    differing = sorted({k for row in matches for k in row if k not in METRICS
                        and any(other.get(k) != row[k] for other in matches)})
    raise LookupError(f"paper {table} has {len(matches)} rows with {wanted}; "
                      f"give also {', '.join(differing) or 'a key that tells them apart'}")
