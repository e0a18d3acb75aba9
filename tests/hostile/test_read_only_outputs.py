"""Outputs that cannot be written: one line naming the folder and the flag to change. A finished run on a read-only
disk is still reported finished. (The tests run as root, where permissions do not stop writes: the operating
system's refusals are simulated.)"""
import errno

import pytest

from conftest import attack, one_line_refusal, run_main
from core.cli import main_guard


def test_an_output_folder_that_cannot_be_written_is_one_line(capsys):
    def write():
        raise PermissionError(errno.EACCES, "Permission denied", "/read-only/attack")
    with pytest.raises(SystemExit) as stop:
        main_guard(write)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "cannot write /read-only/attack (Permission denied); pass a writable --out" in err


def test_a_finished_run_on_a_read_only_disk_is_still_reported_finished(data, tmp_path, capsys, monkeypatch):
    import core.jobs
    import core.runlog

    assert run_main("attack", attack(data, tmp_path / "out"), capsys)[0] == 0
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(core.runlog, "point_latest", read_only)
    monkeypatch.setattr(core.jobs, "run_lock", read_only)  # taking the lock would write the lock file
    code, out, err = run_main("attack", attack(data, tmp_path / "out"), capsys)
    assert code == 0 and "already finished" in out and "not writable" in out, (out, err)


def test_compares_table_folder_that_cannot_be_written_is_refused_before_any_job(data, tmp_path, capsys, monkeypatch):
    import core.cli

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_access = core.cli.os.access
    monkeypatch.setattr(core.cli.os, "access", lambda path, mode: str(path) != str(read_only) and real_access(path, mode))
    err = one_line_refusal("compare", ["--attacks", "BadNets", "--defenses", "ShrinkPad", "--preset", "mini",
                                       "--data-root", str(data), "--attack-dir", str(tmp_path / "attack"),
                                       "--defense-dir", str(tmp_path / "defense"),
                                       "--out-table", str(read_only / "tables" / "cmp")], capsys, tmp_path)
    assert f"--out-table {read_only}/tables/cmp: {read_only} is not a writable folder" in err, err
