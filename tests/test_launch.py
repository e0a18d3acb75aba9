"""Grids through submitit (core/launch.py): its local executor runs the same jobs as SLURM would, without a
cluster."""
import argparse
import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import one_line_refusal, run_main, write_tree
from core.compare import attack_config
from core.launch import GridCell, make_executor

submitit = pytest.importorskip("submitit")


def test_a_grid_of_an_attack_and_its_refine_runs_as_submitit_jobs_and_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_tree(tmp_path / "data", per_class=4)
    (tmp_path / "attack.yaml").write_text("epochs: 1\nwidth: 4\neval_every: 1\n")
    (tmp_path / "refine.yaml").write_text("epochs: 1\nunet_channels: 4\ncompile: false\n")
    argv = ["--attacks", "BadNets", "--defenses", "REFINE", "--preset", "mini", "--device", "cpu", "--data-root",
            str(tmp_path / "data"), "--test-size", "20", "--attack-dir", str(tmp_path / "attack"), "--defense-dir",
            str(tmp_path / "refine_res"), "--attack-config", str(tmp_path / "attack.yaml"), "--defense-config",
            str(tmp_path / "refine.yaml"), "--out-table", str(tmp_path / "table"), "--launcher", "submitit-local",
            "--submitit-folder", str(tmp_path / "jobs" / "%j")]
    code, out, err = run_main("compare", argv, capsys)
    assert code == 0, (out, err)
    assert "wave 1: 1 attack job(s)" in out and "wave 2: 1 defense job(s)" in out
    table = (tmp_path / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| BadNets"))
    assert "—" not in row, table  # both cells came back from their jobs
    assert len(list((tmp_path / "jobs").glob("*/*_result.pkl"))) == 2  # two submitit jobs ran them
    code, out, _ = run_main("compare", argv[:-4] + ["--table-only", "--out-table", str(tmp_path / "again")], capsys)
    assert code == 0 and (tmp_path / "again.md").read_text() == table  # --table-only finds the same runs


def test_a_killed_job_resubmitted_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tree(tmp_path / "data", per_class=4)
    opts = argparse.Namespace(preset="mini", device="cpu", data_root=str(tmp_path / "data"), test_size=20,
                              attack_dir=str(tmp_path / "attack"))
    config = {**attack_config(opts, "BadNets"), "width": 4, "epochs": 30, "eval_every": 30}
    executor = make_executor(argparse.Namespace(launcher="submitit-local", submitit_folder=str(tmp_path / "jobs")))
    # the slow cell's subprocess imports it from tests/; 30 epochs of at least a second each leave the kill time
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SLOW_CELL_PID_FILE", str(tmp_path / "cell.pid"))
    from slow_cell import SlowGridCell
    job = executor.submit(SlowGridCell(), "attack", config)
    states = tmp_path / "attack" / "CIFAR10" / "ResNet18" / "BadNets"
    deadline = time.time() + 120
    while not list(states.glob("*/state/train_state.pth")) and time.time() < deadline:
        time.sleep(0.2)
    # killed mid-run, as a node failure or an OOM kill does. Not job.cancel(): its SIGINT is ignored when the test
    # runs in the background (a shell's `&` or nohup), and the run then simply finished.
    os.kill(int((tmp_path / "cell.pid").read_text()), signal.SIGKILL)
    deadline = time.time() + 60
    while not job.done() and time.time() < deadline:
        time.sleep(0.2)
    [folder] = [p for p in states.iterdir() if not p.is_symlink()]
    assert not json.loads((folder / "run.json").read_text())["finished"]
    again = executor.submit(GridCell(), "attack", config)  # what submitit does for a requeued job
    assert again.result() == str(folder)
    log = (folder / "log.txt").read_text()
    assert "resuming epoch from the end of epoch" in log and json.loads((folder / "run.json").read_text())["finished"]


def test_a_bad_launcher_option_is_one_line(tmp_path, capsys):
    line = one_line_refusal("compare", ["--attacks", "BadNets", "--defenses", "REFINE", "--launcher", "cloud",
                                        "--out-table", str(tmp_path / "t")], capsys, tmp_path)
    assert "--launcher" in line and "slurm" in line


def test_slurm_jobs_carry_the_partition_gpus_time_and_extra_options(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    for name in ("srun", "sbatch"):  # a cluster's commands, as far as submitit looks for them
        (tmp_path / "bin" / name).write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / "bin" / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    executor = make_executor(argparse.Namespace(launcher="slurm", slurm_partition="gpu", slurm_gpus=4,
                                                slurm_time=90, slurm_extra="account=lab,qos=high",
                                                submitit_folder=str(tmp_path / "jobs" / "%j")))
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --time=90", "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --signal=USR2@"):
        assert line in sbatch, (line, sbatch)  # USR2: submitit's signal that requeues a job before its time ends


def test_slurm_without_a_cluster_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    line = one_line_refusal("compare", ["--attacks", "BadNets", "--defenses", "REFINE", "--launcher", "slurm",
                                        "--out-table", str(tmp_path / "t")], capsys, tmp_path)
    assert "no SLURM here" in line and "submitit-local" in line
