"""core.runlog's functions, called directly (no training): what a rerun does with a run folder, method versions,
the one-process-per-folder lock, metrics that no writer loses and the per-preset ``latest`` pointers.
(tests/test_run_safety.py runs the same rules end to end through attack.py and refine.py.)"""
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from core import runlog
from core.errors import UserError
from core.runlog import (METHOD_VERSION, RunLog, check_run_folder, finish_run, finished_run_matches, latest_pointer,
                         method_versions, other_versions_note, point_latest, read_latest, read_metrics, report_finished,
                         run_lock, run_name, settings_hash, start_run, write_run_record)

FORK = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
needs_fork = pytest.mark.skipif(FORK is None or runlog.fcntl is None, reason="needs fork and fcntl")


def settings(version: int | None = 1, **changes) -> dict:
    base = {"attack": "BadNets", "epochs": 2, "lr": 0.1, "momentum": 0.9, "seed": 0,
            "data": {"train": {"images": 40, "kind": "full", "sha256": "0123456789abcdef"}}}
    if version is not None:
        base[METHOD_VERSION] = {"BadNets": version}
    return {**base, **changes}


def folder_of(parent: Path, s: dict, preset: str | None = "mini") -> Path:
    return parent / run_name({"preset": preset, "seed": s["seed"]}, s)


def finished_run(folder: Path, s: dict, preset: str | None = "mini", final: dict | None = None) -> Path:
    """A finished run as the jobs leave it: run.json, its product, final metrics, pointers."""
    folder.mkdir(parents=True, exist_ok=True)
    write_run_record(folder, s)
    (folder / "model.pth").write_bytes(b"model")
    RunLog(folder).update_metrics(final=final or {"BA": 90.0, "BA_correct": 9, "BA_total": 10})
    finish_run(folder, s, preset)
    return folder


# -- check_run_folder: new / resume / fresh / finished / refusals -------------------------------------------

def test_check_run_folder_new_resume_fresh_finished(tmp_path):
    s = settings()
    folder = tmp_path / "run"
    assert check_run_folder(folder, s, "model.pth") == "new"  # no folder
    folder.mkdir()
    (folder / ".lock").write_text("pid 1")  # run_lock's file (and other hidden names) are not files of a run
    (folder / ".metrics.json.abc.tmp").write_text("")
    assert check_run_folder(folder, s, "model.pth") == "new"

    write_run_record(folder, s)  # unfinished run of the same settings
    assert check_run_folder(folder, s, "model.pth") == "resume"
    assert check_run_folder(folder, s, "model.pth", fresh=True) == "fresh"
    assert check_run_folder(folder, settings(momentum=0.5), "model.pth", fresh=True) == "fresh"

    write_run_record(folder, s, finished=True)  # finished, but its product is missing: not finished
    assert check_run_folder(folder, s, "model.pth") == "resume"
    (folder / "model.pth").write_bytes(b"model")
    assert check_run_folder(folder, s, "model.pth") == "finished"
    assert check_run_folder(folder, s, "model.pth", fresh=True) == "finished"  # --fresh spares a finished run


def test_check_run_folder_refusals_name_the_difference(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds files but no run.json"):
        check_run_folder(folder, settings(), "model.pth")

    write_run_record(folder, settings())
    with pytest.raises(UserError, match=r"unfinished run with other settings \(momentum: 0.9 != 0.5\)"):
        check_run_folder(folder, settings(momentum=0.5), "model.pth")
    (folder / "metrics.json").write_text('{"evaluations": [')
    with pytest.raises(UserError, match="metrics.json is truncated or corrupt"):
        check_run_folder(folder, settings(), "model.pth")

    write_run_record(folder, settings(), finished=True)
    (folder / "model.pth").write_bytes(b"model")
    with pytest.raises(UserError, match=r"finished run with other settings \(momentum: 0.9 != 0.5\); it is kept"):
        check_run_folder(folder, settings(momentum=0.5), "model.pth", fresh=True)
    with pytest.raises(UserError, match=r"method_version.BadNets: 1 != 2"):  # under --run-name: refused
        check_run_folder(folder, settings(version=2), "model.pth")

    (folder / "run.json").write_text('{"fingerprint": "ab')
    with pytest.raises(UserError, match="run.json is truncated or corrupt"):
        check_run_folder(folder, settings(), "model.pth")


def test_start_run_fresh_discards_the_unfinished_run_even_with_damaged_metrics(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    write_run_record(folder, settings())
    (folder / "train_state.pth").write_bytes(b"state")
    (folder / "log.txt").write_text("old line\n")
    (folder / "metrics.json").write_text('{"evaluations": [')  # cut short
    status = check_run_folder(folder, settings(momentum=0.5), "model.pth", fresh=True)
    run = start_run(folder, status, settings(momentum=0.5), {"preset": "mini", "seed": 0}, ["a note"],
                    discard=("train_state.pth",), header="header line")
    assert run.metrics == {} and not (folder / "metrics.json").exists() and not (folder / "train_state.pth").exists()
    record = json.loads((folder / "run.json").read_text())
    assert record["fingerprint"] == settings_hash(settings(momentum=0.5)) and not record["finished"]
    assert record["code"] == runlog.code_version()
    log = (folder / "log.txt").read_text()
    assert log.startswith("old line\n") and "discarded" in log and "header line" in log and "a note" in log
    assert (folder / "config.yaml").is_file()


# -- method versions ---------------------------------------------------------------------------------------

class BadNets:
    name, version = "BadNets", 2


class REFINE:
    name, version = "REFINE", 1


def test_method_versions_shape():
    assert method_versions(BadNets) == {"BadNets": 2}
    assert method_versions(REFINE(), BadNets, None) == {"REFINE": 1, "BadNets": 2}

    class Unversioned:
        name = "X"
    with pytest.raises(TypeError, match="integer version"):
        method_versions(Unversioned)


def test_a_bumped_method_version_trains_anew_and_names_the_old_run(tmp_path):
    parent = tmp_path / "BadNets"
    old = finished_run(folder_of(parent, settings(1)), settings(1))
    finished_run(folder_of(parent, settings(1, momentum=0.5)), settings(1, momentum=0.5))  # another recipe
    unfinished = folder_of(parent, settings(None, lr=0.2))
    unfinished.mkdir()
    write_run_record(unfinished, settings(None, lr=0.2))  # unfinished: nothing to name

    new = settings(2)
    folder = folder_of(parent, new)
    assert folder != old and check_run_folder(folder, new, "model.pth") == "new"  # not "finished"
    note = other_versions_note(folder, new, "model.pth")
    assert note == f"{old} holds a finished run of BadNets version 1; this code is version 2, so this run trains anew"
    assert other_versions_note(folder, settings(1, epochs=3), "model.pth") is None

    # a run made before versions existed counts as another version too
    pre = finished_run(folder_of(parent, settings(None)), settings(None))
    note = other_versions_note(folder, new, "model.pth")
    assert "\n" not in note and f"{old} holds a finished run of BadNets version 1" in note
    assert f"{pre} holds a finished run made before method versions were recorded" in note
    assert note.endswith("this code is BadNets version 2, so this run trains anew")



def test_finished_run_matches_compares_the_settings_in_full(tmp_path):
    folder = finished_run(tmp_path / "run", settings(1))
    assert finished_run_matches(folder, settings(1), "model.pth") == (True, "")

    ok, reason = finished_run_matches(folder, settings(1, momentum=0.5))
    assert not ok and reason == "momentum: 0.9 != 0.5"
    ok, reason = finished_run_matches(folder, settings(1, weight_decay=0.0005))  # a key only one side has
    assert not ok and reason == "weight_decay: (absent) != 0.0005"
    ok, reason = finished_run_matches(folder, settings(1, data={"train": {"images": 40, "kind": "full",
                                                                           "sha256": "fedcba9876543210"}}))
    assert not ok and reason == 'data.train.sha256: "0123456789abcdef" != "fedcba9876543210"'
    assert finished_run_matches(folder, settings(1, data=None), ignore=("data",)) == (True, "")

    ok, reason = finished_run_matches(folder, settings(2))
    assert not ok and reason == "made by BadNets version 1, this code is version 2 (run the cell again to recompute)"
    ok, reason = finished_run_matches(folder, settings(2, momentum=0.5))
    assert not ok and reason.startswith("momentum: 0.9 != 0.5; made by BadNets version 1")
    ok, reason = finished_run_matches(finished_run(tmp_path / "pre", settings(None)), settings(2))
    assert not ok and reason.startswith("made before method versions were recorded, this code is BadNets version 2")

    (folder / "model.pth").unlink()
    assert finished_run_matches(folder, settings(1), "model.pth") == (False, f"{folder} has no model.pth")
    write_run_record(folder, settings(1))
    assert finished_run_matches(folder, settings(1)) == (False, f"{folder} holds an unfinished run")
    assert finished_run_matches(tmp_path / "none", settings(1))[0] is False


# -- one process per run folder ----------------------------------------------------------------------------

def _hold(folder, ready, release):
    with run_lock(folder):
        ready.set()
        release.wait(20)


@needs_fork
def test_a_second_process_is_refused_in_one_line_or_waits(tmp_path):
    folder = tmp_path / "a" / "run"
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(folder, ready, release))
    holder.start()
    try:
        assert ready.wait(20)
        assert (folder / ".lock").is_file() and check_run_folder(folder, settings(), "model.pth") == "new"
        with pytest.raises(UserError) as refused:
            with run_lock(folder):
                pass
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"{folder} is in use by another process (pid {holder.pid} ")
        assert "started at" in message

        lines = []
        threading.Timer(0.3, release.set).start()
        with run_lock(folder, wait=True, log=lines.append):
            holder.join(5)
            assert holder.exitcode == 0  # the holder let go first
        assert len(lines) == 1 and "waiting for it to end" in lines[0]
    finally:
        release.set()
        holder.join(20)
    assert not (folder / ".lock").exists()  # (whether the empty folders go too depends on who left last)


def _job(folder, s, start, results, hold):
    """A job's skeleton: check the folder, train (sleep), write metrics and the product, finish."""
    start.wait(20)
    try:
        with run_lock(folder, wait=True):
            status = check_run_folder(folder, s, "model.pth")
            results.put(status)
            if status == "finished":
                return
            time.sleep(hold)
            run = start_run(folder, status, s, {"preset": "mini", "seed": 0}, [])
            for epoch in range(1, 6):
                run.append_metric("evaluations", {"epoch": epoch, "pid": os.getpid()})
            (folder / "model.pth").write_bytes(b"model")
            run.update_metrics(final={"BA": 1.0})
            finish_run(folder, s, "mini")
    except UserError as exc:
        results.put(f"error: {exc}")


def started_together(start, target, *argument_lists):
    """One process per argument list, all started, then released at once through the event ``start``."""
    procs = [FORK.Process(target=target, args=args) for args in argument_lists]
    for proc in procs:
        proc.start()
    start.set()
    return procs


@needs_fork
def test_two_identical_commands_started_together_train_once(tmp_path):
    folder = folder_of(tmp_path, settings())
    start, results = FORK.Event(), FORK.Queue()
    jobs = started_together(start, _job, *[(folder, settings(), start, results, 0.5)] * 2)
    for job in jobs:
        job.join(30)
    assert [job.exitcode for job in jobs] == [0, 0]
    assert sorted(results.get(timeout=5) for _ in jobs) == ["finished", "new"]
    metrics = read_metrics(folder)
    assert [e["epoch"] for e in metrics["evaluations"]] == [1, 2, 3, 4, 5] and metrics["final"] == {"BA": 1.0}
    assert len({e["pid"] for e in metrics["evaluations"]}) == 1
    assert not (folder / ".lock").exists()


def _first_come(folder, start, results, done):
    start.wait(20)
    try:
        with run_lock(folder):
            results.put("locked")
            done.wait(20)
    except UserError as exc:
        results.put(f"error: {exc}")


@needs_fork
def test_of_two_processes_racing_without_wait_one_gets_the_folder_the_other_a_user_error(tmp_path):
    folder = tmp_path / "run"
    start, done, results = FORK.Event(), FORK.Event(), FORK.Queue()
    procs = started_together(start, _first_come, *[(folder, start, results, done)] * 2)
    try:
        got = sorted(results.get(timeout=20) for _ in procs)
    finally:
        done.set()
        for proc in procs:
            proc.join(20)
    assert got[1] == "locked" and got[0].startswith(f"error: {folder} is in use by another process (pid ")
    assert "\n" not in got[0]


def _writer(folder, tag, start):
    start.wait(20)
    with run_lock(folder, wait=True):
        run = RunLog(folder)
        time.sleep(0.2)
        for i in range(20):
            run.update_metrics(**{f"{tag}{i}": i})


@needs_fork
def test_metrics_of_two_processes_are_not_lost(tmp_path):
    folder = tmp_path / "run"
    start = FORK.Event()
    procs = started_together(start, _writer, *[(folder, tag, start) for tag in "ab"])
    for proc in procs:
        proc.join(30)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert sorted(read_metrics(folder)) == sorted(f"{tag}{i}" for tag in "ab" for i in range(20))


def test_a_run_refused_inside_the_lock_leaves_nothing_and_the_lock_is_not_reentrant(tmp_path):
    folder = tmp_path / "out" / "CIFAR10" / "run"
    with pytest.raises(UserError, match="refused"):
        with run_lock(folder):
            assert folder.is_dir()
            with pytest.raises(RuntimeError, match="already locked by this process"):
                with run_lock(folder):
                    pass
            raise UserError("refused")
    assert not (tmp_path / "out").exists()

    existing = tmp_path / "kept"
    existing.mkdir()
    with run_lock(existing):
        (existing / "run.json").write_text("{}")
    assert sorted(p.name for p in existing.iterdir()) == ["run.json"]  # only the lock file went away


def test_without_fcntl_the_lock_warns_and_locks_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "fcntl", None)
    with pytest.warns(RuntimeWarning, match="no file locks"):
        with run_lock(tmp_path / "run"):
            pass


def test_metrics_writes_of_one_process_merge(tmp_path):
    a, b = RunLog(tmp_path), RunLog(tmp_path)  # e.g. a job and a helper with a RunLog of their own
    a.update_metrics(no_defense={"BA": 1.0})
    b.append_metric("evaluations", {"epoch": 1, "BA": 2.0})
    a.append_metric("evaluations", {"epoch": 2, "BA": 3.0})
    a.append_metric("evaluations", {"epoch": 1, "BA": 4.0})  # the same epoch again replaces it
    assert read_metrics(tmp_path) == {"no_defense": {"BA": 1.0},
                                      "evaluations": [{"epoch": 2, "BA": 3.0}, {"epoch": 1, "BA": 4.0}]}
    assert a.metrics == read_metrics(tmp_path)

    def write(tag):
        run = RunLog(tmp_path)
        for i in range(15):
            run.update_metrics(**{f"{tag}{i}": i})
    threads = [threading.Thread(target=write, args=(tag,)) for tag in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {f"{tag}{i}" for tag in "xyz" for i in range(15)} <= set(read_metrics(tmp_path))


# -- latest per preset -------------------------------------------------------------------------------------

def test_each_preset_keeps_its_own_latest(tmp_path, capsys):
    mini = finished_run(folder_of(tmp_path, settings(epochs=2)), settings(epochs=2), "mini")
    paper = finished_run(folder_of(tmp_path, settings(epochs=150), "paper"), settings(epochs=150), "paper")
    custom = finished_run(folder_of(tmp_path, settings(epochs=3), None), settings(epochs=3), None)
    assert read_latest(tmp_path) == custom.resolve()  # the official pointer: the last finished run, any preset
    assert read_latest(tmp_path, "mini") == mini.resolve() and read_latest(tmp_path, "paper") == paper.resolve()
    assert read_latest(tmp_path, "custom") == custom.resolve() and latest_pointer(None) == "latest-custom"
    assert read_latest(tmp_path, "fast") is None  # no fallback to another preset's run

    report_finished(mini, preset="mini")  # the identical mini command again: points the shared one back
    assert "already finished" in capsys.readouterr().out
    assert read_latest(tmp_path) == mini.resolve() and read_latest(tmp_path, "paper") == paper.resolve()
    assert os.readlink(tmp_path / "latest-mini") == mini.name  # relative


def test_per_preset_latest_falls_back_to_a_text_file(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks are not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    point_latest(tmp_path, "a", latest_pointer("mini"))
    point_latest(tmp_path, "b", latest_pointer("paper"))
    point_latest(tmp_path, "b")
    assert (tmp_path / "latest-mini.txt").read_text() == "a\n"
    assert read_latest(tmp_path, "mini") == (tmp_path / "a").resolve()
    assert read_latest(tmp_path, "paper") == read_latest(tmp_path) == (tmp_path / "b").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "latest-mini.txt", "latest-paper.txt",
                                                          "latest.txt"]
