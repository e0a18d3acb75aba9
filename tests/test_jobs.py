"""The one job skeleton (core/jobs.py): a method's version is part of what a run computes, and one run folder is
trained by one process at a time."""
import subprocess
import sys

import torch

from core.attacks import ATTACKS
from core.runlog import read_run_record
from conftest import ROOT, attack, run_main, runs



def test_a_finished_run_of_another_method_version_is_not_reported_finished(data, tmp_path, capsys, monkeypatch):
    out, parent = tmp_path / "attack", tmp_path / "attack" / "CIFAR10" / "ResNet18" / "BadNets"
    assert run_main("attack", attack(data, out), capsys)[0] == 0
    [old] = runs(parent)
    assert read_run_record(old)["settings"]["method_version"] == {"BadNets": 1}

    monkeypatch.setattr(ATTACKS["BadNets"], "version", 2)  # BadNets' results changed: its version is bumped
    code, stdout, err = run_main("attack", attack(data, out), capsys)
    assert code == 0, err
    assert "already finished" not in stdout
    [new] = [p for p in runs(parent) if p != old]
    log = (new / "log.txt").read_text()
    assert f"{old} holds a finished run of BadNets version 1; this code is version 2, so this run trains anew" in log
    assert read_run_record(new)["finished"] and read_run_record(old)["finished"]  # the old one is kept as it was


def test_two_identical_runs_started_together_leave_one_intact_run(data, tmp_path):
    out = tmp_path / "attack"
    argv = [sys.executable, str(ROOT / "attack.py"), *attack(data, out, "--epochs", "3")]
    first, second = (subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2))
    results = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    [run] = runs(out / "CIFAR10" / "ResNet18" / "BadNets")
    trained = [r for r in results if "done in" in r[1]]
    assert len(trained) == 1, results  # one process trained ...
    other = next(r for r in results if r is not trained[0])
    # ... the other was refused while the folder was in use, or found the run finished
    assert (other[0] == 2 and "is in use by another process" in other[2]) or "already finished" in other[1], other
    assert read_run_record(run)["finished"]
    assert torch.load(run / "model.pth", weights_only=True)["format"]
    assert (run / "log.txt").read_text().count("attack.py: BadNets") == 1  # one training wrote the log
