"""Bad option values - typed or carried by a YAML file - stop attack.py and refine.py up front: one line
naming the flag and the allowed values, exit status 2, no traceback and nothing written. A diverging run
stops with one line too, and is never saved as a result."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.checkpoint import save_classifier
from core.models import build_classifier
from conftest import ROOT, run_main, snapshot, write_tree

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data, an (untrained) model file to defend, and output roots that already hold something."""
    root = tmp_path_factory.mktemp("world")
    write_tree(root / "data", per_class=4)
    torch.manual_seed(0)
    save_classifier(root / "model.pth", build_classifier("ResNet18", "CIFAR10", 10, width=4))
    for out in ("attack_out", "refine_out"):
        (root / out).mkdir()
        (root / out / "keep.txt").write_text("an earlier file\n")
    return root


def _epochs(extra):  # one epoch unless a config file under test sets the value (flags win over files)
    return [] if "--config" in extra else ["--epochs", "1"]


def attack_argv(world, *extra):
    return ["--data-root", str(world / "data"), "--out", str(world / "attack_out"), "--preset", "mini",
            "--width", "4", "--device", "cpu", *_epochs(extra), *extra]


def refine_argv(world, *extra):
    return ["--data-root", str(world / "data"), "--out", str(world / "refine_out"), "--attack-dir",
            str(world / "attack_out"), "--model-path", str(world / "model.pth"), "--preset", "mini",
            "--unet-channels", "4", "--compile", "false", "--device", "cpu", *_epochs(extra), *extra]


def bad_yaml(world, name: str, text: str) -> str:
    path = world / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def small_trigger(world) -> str:
    torch.save({"pattern": torch.ones(3, 5, 5)}, world / "small_trigger.pth")
    return str(world / "small_trigger.pth")


# (script, extra argv (a callable of the world fixture for files), flag the message must name)
BATTERY = [
    ("attack", ["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    ("attack", ["--epochs", "-3"], "--epochs must be an integer >= 1, got -3"),
    ("attack", ["--epochs", "0"], "--epochs must be an integer >= 1"),
    ("attack", ["--lr", "0"], "--lr must be a number > 0 (at most 1e6)"),
    ("attack", ["--lr", "nan"], "--lr must be a number > 0 (at most 1e6), got nan"),
    ("attack", ["--lr", "inf"], "--lr must be a number > 0 (at most 1e6), got inf"),
    ("attack", ["--lr", "1e308"], "--lr must be a number > 0 (at most 1e6), got 1e+308"),
    ("attack", ["--width", "0"], "--width must be an integer in [1, 512], got 0"),
    ("attack", ["--model", "ViT", "--width", "6"], "--width must be a multiple of 4 for ViT"),
    ("attack", ["--tlabel", "12"], "--y-target must be an integer in [0, 9], got 12"),
    ("attack", ["--tlabel", "-1"], "--y-target must be an integer in [0, 9], got -1"),
    ("attack", ["--poisoned-rate", "1.5"], "--poisoned-rate must be a number in [0, 1], got 1.5"),
    ("attack", ["--train-size", "0"], "--train-size must be an integer >= 10, got 0"),
    ("attack", ["--test-size", "3"], "--test-size must be an integer >= 10, got 3"),
    ("attack", ["--eval-every", "0"], "--eval-every must be an integer >= 1"),
    ("attack", ["--trigger", "/missing.png"], "--trigger must be an existing file, got '/missing.png'"),
    ("attack", lambda w: ["--trigger", small_trigger(w)], "--trigger must hold a 32x32 pattern"),
    ("attack", ["--attack", "Blended", "--alpha", "2"], "--alpha must be a number in (0, 1], got 2"),
    ("attack", ["--weight-decay", "-1"], "--weight-decay must be a number >= 0"),
    ("attack", ["--label-smoothing", "2"], "--label-smoothing must be a number in [0, 1]"),
    ("attack", ["--seed", "-1"], "--seed must be an integer in [0, 2147483647], got -1"),
    ("attack", ["--attack", "Wanet"], "--attack must be one of Benign, BadNets, Blended, WaNet, Physical, BATT, LC, "
                                      "Adaptive, PhysicalBA, LabelConsistent, AdaptivePatch, got 'Wanet'"),
    ("attack", ["--attack", "WaNet", "--alpha", "0.2"], "--alpha is a setting of Blended, not of WaNet"),
    ("attack", ["--attack", "WaNet", "--wanet-k", "1"], "--wanet-k must be an integer in [2, 224], got 1"),
    ("attack", ["--attack", "Adaptive", "--patch-opacity", "0.5,2,0.1,0.1"],
     "--patch-opacity must be a list of 4 numbers in [0, 1], got [0.5, 2, 0.1, 0.1]"),
    ("attack", ["--attack", "LC"], "LC needs a model of CIFAR10/ResNet18 trained by Benign and none was found"),
    ("attack", lambda w: ["--config", bad_yaml(w, "ten", "epochs: ten\n")],
     "--epochs must be an integer >= 1, got 'ten'"),
    ("attack", lambda w: ["--config", bad_yaml(w, "ms", "milestones: 5\n")], "--milestones must be a list of integers"),
    ("attack", lambda w: ["--config", bad_yaml(w, "aug", "augment: rotate\n")], "--augment must be one of"),
    ("attack", lambda w: ["--config", bad_yaml(w, "amp", "amp: maybe\n")], "--amp must be true or false"),
    ("attack", lambda w: ["--config", bad_yaml(w, "mom", "momentum: 1.5\n")],
     "--momentum must be a number in [0, 1), got 1.5"),
    ("refine", ["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    ("refine", ["--epochs", "-1"], "--epochs must be an integer >= 1, got -1"),
    ("refine", ["--unet-channels", "0"], "--unet-channels must be an integer in [1, 512], got 0"),
    ("refine", ["--sup", "-0.1"], "--lam must be a number >= 0, got -0.1"),
    ("refine", ["--temperature", "0"], "--temperature must be a number > 0, got 0"),
    ("refine", ["--data-fraction", "0"], "--data-fraction must be a number in (0, 1], got 0"),
    ("refine", ["--data-fraction", "1.5"], "--data-fraction must be a number in (0, 1], got 1.5"),
    ("refine", ["--tlabel", "10"], "--y-target must be an integer in [0, 9], got 10"),
    ("refine", ["--lr", "-1"], "--lr must be a number > 0 (at most 1e6), got -1"),
    ("refine", ["--eval-every", "0"], "--eval-every must be an integer >= 1"),
    ("refine", ["--model-path", "/missing.pth"], "--model-path must be an existing file, got '/missing.pth'"),
    ("refine", ["--decay", "0"], "--gamma must be a number > 0"),
    ("refine", ["--test-size", "5"], "--test-size must be an integer >= 10, got 5"),
    ("refine", ["--run-name", "../elsewhere"], "--run-name must be a plain name"),
    ("refine", ["--trigger", "/missing.pth"], "--trigger must be an existing file"),
    ("refine", lambda w: ["--config", bad_yaml(w, "lr", "lr: fast\n")], "--lr must be a number > 0 (at most 1e6), got 'fast'"),
    ("refine", lambda w: ["--config", bad_yaml(w, "lam", "lam: [0.1]\n")], "--lam must be a number >= 0"),
]


@pytest.mark.parametrize("script,extra,message", BATTERY,
                         ids=[f"{s}:{' '.join(e) if isinstance(e, list) else 'yaml:' + m.split()[0]}"
                              for s, e, m in BATTERY])
def test_bad_values_stop_the_script_up_front(world, capsys, script, extra, message):
    extra = extra(world) if callable(extra) else extra
    argv = (attack_argv if script == "attack" else refine_argv)(world, *extra)
    before = snapshot(world / "attack_out", world / "refine_out")
    code, out, err = run_main(script, argv, capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert message in err, err
    assert snapshot(world / "attack_out", world / "refine_out") == before, "a refused run wrote something"


def test_bad_values_are_one_line_in_a_real_process(world):
    """One of the battery through the real interpreter entry point (the rest run each script's main in this
    process, as its __main__ block does): no traceback reaches the user."""
    for script, argv, message in [
        ("attack.py", attack_argv(world, "--config", bad_yaml(world, "ten2", "epochs: ten\n")), "--epochs must"),
    ]:
        before = snapshot(world / "attack_out", world / "refine_out")
        r = subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert message in r.stderr and r.stdout == "", (r.stdout, r.stderr)
        assert snapshot(world / "attack_out", world / "refine_out") == before


def only_run(parent: Path) -> Path:
    runs = [p for p in parent.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1, runs
    return runs[0]


def test_a_diverging_attack_stops_with_one_line_and_saves_no_model(world, tmp_path, capsys):
    out = tmp_path / "attack"
    argv = attack_argv(world, "--out", str(out), "--batch-size", "8", "--lr", "1e6", "--schedule", "constant",
                       "--test-size", "20")
    code, _, err = run_main("attack", argv, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "loss became nan at epoch 1, step" in err and "lower the learning rate (--lr)" in err, err
    run = only_run(out / "CIFAR10" / "ResNet18" / "BadNets")
    assert not (run / "model.pth").exists() and not (run / "state" / "train_state.pth").exists()
    assert not (run.parent / "latest").exists(), "a diverged run is not the latest model"
    assert json.loads((run / "run.json").read_text())["finished"] is False
    assert "final" not in (json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {})
    assert "training diverged" in (run / "log.txt").read_text()


def test_a_run_diverging_later_keeps_its_last_good_epoch(world, tmp_path, capsys):
    # epoch 1 trains at lr 0.01; the multistep factor then multiplies it by 1e30 and epoch 2 blows up
    out = tmp_path / "attack"
    argv = attack_argv(world, "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "0.01",
                       "--optimizer", "SGD", "--schedule", "multistep", "--milestones", "1", "--gamma", "1e30",
                       "--eval-every", "1", "--test-size", "20")
    code, _, err = run_main("attack", argv, capsys)
    assert code == 2 and "loss became" in err and "at epoch 2, step" in err, err
    run = only_run(out / "CIFAR10" / "ResNet18" / "BadNets")
    state = torch.load(run / "state" / "train_state.pth", weights_only=True)
    assert state["epoch"] == 1, "the state of the last good epoch is kept for a resume"
    assert all(torch.isfinite(v).all() for v in state["modules"]["model"].values() if v.is_floating_point())
    metrics = json.loads((run / "metrics.json").read_text())
    assert "final" not in metrics and [e["epoch"] for e in metrics["evaluations"]] == [1]
    assert not (run / "model.pth").exists()
    before = snapshot(run)
    code, _, err = run_main("attack", argv, capsys)  # the same command resumes at epoch 2 and diverges again
    assert code == 2 and "at epoch 2, step" in err, err
    assert torch.load(run / "state" / "train_state.pth", weights_only=True)["epoch"] == 1
    assert {k: v for k, v in snapshot(run).items() if not k.endswith("log.txt")} == \
        {k: v for k, v in before.items() if not k.endswith("log.txt")}


def test_a_diverging_refine_stops_and_keeps_its_last_good_epoch(world, tmp_path, capsys):
    out = tmp_path / "refine"
    argv = refine_argv(world, "--out", str(out), "--preset", "paper", "--epochs", "2", "--batch-size", "8",
                       "--lr", "0.01", "--schedule", "multistep", "--milestones", "1", "--decay", "1e30",
                       "--eval-every", "1", "--test-size", "20")
    code, _, err = run_main("refine", argv, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "loss became" in err and "at epoch 2, step" in err and "lower the learning rate (--lr)" in err, err
    run = only_run(out / "CIFAR10" / "ResNet18" / "BadNets")
    assert not (run / "defended_model.pth").exists() and not (run.parent / "latest").exists()
    assert torch.load(run / "state" / "train_state.pth", weights_only=True)["epoch"] == 1
    assert "final" not in json.loads((run / "metrics.json").read_text())

