"""Run folders are never damaged: every run gets a folder unique for its settings, a refused run writes
nothing, a REFINE run never resumes a UNet trained against another model, checkpoints are written
atomically and a damaged one is named as such."""
import json
import os
import threading
from pathlib import Path

import pytest
import torch
import yaml

from core.checkpoint import atomic_save, atomic_write, load_classifier, safe_load, save_classifier
from core.errors import UserError
from core.models import build_classifier
from core.runlog import RunLog, point_latest, read_latest
from core.settings import flatten
from conftest import attack, run_main, runs, snapshot



def refine(data, out, model, *extra):
    return ["--data-root", str(data), "--out", str(out), "--model-path", str(model), "--preset", "mini",
            "--unet-channels", "4", "--epochs", "1", "--compile", "false", "--test-size", "20", "--device", "cpu",
            "--attack-dir", str(out.parent / "no_attacks_here"), *extra]


def test_other_seed_gets_its_own_folder_and_a_finished_run_is_never_touched(data, tmp_path, capsys):
    out = tmp_path / "attack"
    parent = out / "CIFAR10" / "ResNet18" / "BadNets"
    assert run_main("attack", attack(data, out), capsys)[0] == 0
    [seed0] = runs(parent)
    assert seed0.name.startswith("mini_seed0_") and len(seed0.name) == len("mini_seed0_") + 8
    assert read_latest(parent) == seed0.resolve() and (parent / "latest" / "model.pth").is_file()
    finished = snapshot(seed0)

    code, stdout, _ = run_main("attack", attack(data, out), capsys)  # the identical command: nothing to do
    assert code == 0 and "already finished" in stdout
    code, stdout, _ = run_main("attack", attack(data, out, "--fresh"), capsys)  # --fresh spares finished runs
    assert code == 0 and "already finished" in stdout
    assert snapshot(seed0) == finished

    code, _, err = run_main("attack", attack(data, out, "--seed", "1"), capsys)
    assert code == 0, err
    seed1 = next(p for p in runs(parent) if p != seed0)
    assert seed1.name.startswith("mini_seed1_")
    assert snapshot(seed0) == finished, "the seed-1 run changed the seed-0 folder"
    assert read_latest(parent) == seed1.resolve()
    assert torch.load(seed0 / "poisoned_indices.pth") is not None
    assert not torch.equal(torch.load(seed0 / "trigger.pth")["pattern"], torch.load(seed1 / "trigger.pth")["pattern"])

    # the run folder records absolute paths, so it can be read from any working directory
    config = flatten(yaml.safe_load((seed1 / "config.yaml").read_text()))
    assert Path(config["out"]).is_absolute() and Path(config["data_root"]).is_absolute()
    settings = json.loads((seed1 / "run.json").read_text())["settings"]
    assert "out" not in settings and "device" not in settings and settings["seed"] == 1
    assert settings["data"]["train"]["images"] == 40 and settings["data"]["train"]["kind"] == "full"


def _model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_classifier(path, build_classifier("ResNet18", "CIFAR10", 10, width=4))
    return path


def test_refine_never_resumes_a_unet_trained_against_another_model(data, tmp_path, capsys):
    a, b = _model(tmp_path / "a.pth", 0), _model(tmp_path / "b.pth", 1)
    out = tmp_path / "refine"
    parent = out / "CIFAR10" / "ResNet18" / "BadNets"
    assert run_main("refine", refine(data, out, a), capsys)[0] == 0
    [run_a] = runs(parent)
    finished = snapshot(run_a)
    meta = torch.load(run_a / "defended_model.pth", weights_only=True)["meta"]
    assert meta["source_model"] == str(a.resolve())

    # the same folder named explicitly for another model: refused, nothing written
    code, _, err = run_main("refine", refine(data, out, b, "--run-name", run_a.name), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "holds a finished run with other settings (model_path.sha256" in err, err
    assert snapshot(run_a) == finished

    # an unfinished run (it diverged in epoch 2) is not resumed with another model either
    diverging = ("--preset", "paper", "--epochs", "2", "--lr", "0.01", "--schedule", "multistep", "--milestones", "1",
                 "--decay", "1e30", "--batch-size", "8")
    code, _, err = run_main("refine", refine(data, out, a, "--run-name", "stopped", *diverging), capsys)
    assert code == 2 and "training diverged" in err, err
    stopped = snapshot(parent / "stopped")
    code, _, err = run_main("refine", refine(data, out, b, "--run-name", "stopped", *diverging), capsys)
    assert code == 2 and "holds an unfinished run with other settings (model_path.sha256" in err, err
    assert snapshot(parent / "stopped") == stopped

    # by default another model gets another folder
    assert run_main("refine", refine(data, out, b), capsys)[0] == 0
    run_b = next(p for p in runs(parent) if p not in (run_a, parent / "stopped"))
    assert run_b.name != run_a.name and snapshot(run_a) == finished
    assert read_latest(parent) == run_b.resolve()
    code, stdout, _ = run_main("refine", ["--eval", str(parent), "--data-root", str(data)], capsys)  # latest run
    final = json.loads((run_b / "metrics.json").read_text())["final"]
    assert code == 0 and f"BA {final['BA']:.2f}%" in stdout


def test_damaged_checkpoints_are_named_and_nothing_is_written(data, tmp_path, capsys):
    # an attack that diverges in epoch 2 leaves a resumable state of epoch 1; then that state gets cut short
    out = tmp_path / "attack"
    argv = attack(data, out, "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--optimizer", "SGD",
                  "--schedule", "multistep", "--milestones", "1", "--gamma", "1e30")
    assert run_main("attack", argv, capsys)[0] == 2
    [run] = runs(out / "CIFAR10" / "ResNet18" / "BadNets")
    state = run / "state" / "train_state.pth"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    before = snapshot(out)
    code, _, err = run_main("attack", argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "is truncated or corrupt" in err and "train_state.pth" in err, err
    assert snapshot(out) == before

    # a truncated model to defend
    model = _model(tmp_path / "m.pth", 0)
    model.write_bytes(model.read_bytes()[:1000])
    code, _, err = run_main("refine", refine(data, tmp_path / "refine", model), capsys)
    assert code == 2 and "is truncated or corrupt" in err and "re-save" not in err, err
    assert not (tmp_path / "refine").exists()
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UserError, match="empty.pth is truncated or corrupt"):
        load_classifier(tmp_path / "empty.pth", "ResNet18", "CIFAR10", 10)


def test_parallel_atomic_writes_do_not_collide_and_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "ckpt.pth"
    errors = []

    def writer(i):
        try:
            for _ in range(5):
                atomic_save({"writer": i, "data": torch.full((20000,), float(i))}, target)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    blob = safe_load(target)
    assert torch.equal(blob["data"], torch.full((20000,), float(blob["writer"])))  # one writer's whole file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]  # no temporary file left

    def broken(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert safe_load(target)["writer"] == blob["writer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]


def test_runlog_never_deletes_and_latest_falls_back_to_a_text_file(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "log.txt").write_text("old line\n")
    (folder / "metrics.json").write_text('{"final": {"BA": 1}}')
    run = RunLog(folder)
    run.log("new line", echo=False)
    assert run.metrics == {"final": {"BA": 1}}
    assert (folder / "log.txt").read_text().startswith("old line\n")

    parent = tmp_path / "runs"
    (parent / "a").mkdir(parents=True)
    (parent / "b").mkdir()
    point_latest(parent, "a")
    assert os.readlink(parent / "latest") == "a" and read_latest(parent) == (parent / "a").resolve()

    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks are not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    (parent / "latest").unlink()
    point_latest(parent, "b")
    assert (parent / "latest.txt").read_text().strip() == "b" and read_latest(parent) == (parent / "b").resolve()
    assert sorted(p.name for p in parent.iterdir()) == ["a", "b", "latest.txt"]
