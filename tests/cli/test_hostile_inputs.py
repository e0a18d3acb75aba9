"""Hostile inputs, by class of fault: each is refused with one line naming what to do, exit status 2, nothing
written and no code run. (The issue's battery; more classes join as they are fixed.)"""
import argparse
import os
import pickle

import numpy as np
import torch
import pytest

from conftest import run_main, snapshot, write_tree
from core.config import resolve
from core.data import load_split
from core.errors import UserError
from core.run_attack import attack_job_settings
from core.settings import defaults


def one_line_refusal(script, argv, capsys, *watched):
    before = snapshot(*watched)
    code, out, err = run_main(script, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, (out, err)
    assert snapshot(*watched) == before, "a refused run wrote something"
    return err


# -- untrusted pickles in data --------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create ``marker``: the code a hostile data file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _batches(folder, test_entry):
    folder.mkdir(parents=True)
    good = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1], "batch_label": "x", "filenames": []}
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(good))
    (folder / "test_batch").write_bytes(pickle.dumps(test_entry))


def test_a_cifar_batch_that_carries_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    _batches(tmp_path / "data" / "cifar-10-batches-py", {"data": _Payload(marker), "labels": [0]})
    with pytest.raises(UserError, match=r"test_batch is not a CIFAR-10 batch \(it names posix\.mkdir\); refused"):
        load_split("CIFAR10", "test", tmp_path / "data")
    assert not marker.exists(), "the payload ran"
    train = load_split("CIFAR10", "train", tmp_path / "data")  # the numpy arrays of a real batch still load
    assert train.images.shape == (10, 3, 32, 32)


def test_an_incomplete_or_damaged_cifar_folder_is_named(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    _batches(folder, {"data": np.zeros((1, 3072), dtype=np.uint8), "labels": [0]})
    (folder / "data_batch_1").unlink()
    with pytest.raises(UserError, match="data_batch_1 is missing"):
        load_split("CIFAR10", "train", tmp_path / "data")
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]})[:20])
    with pytest.raises(UserError, match="test_batch is truncated or corrupt"):
        load_split("CIFAR10", "test", tmp_path / "data")


# -- the command line and config files ------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--epochz", "3"], "unrecognized arguments: --epochz 3; `"),
    (["--epochs"], "argument --epochs/--epoch: expected one argument; `"),
])
def test_argparse_refusals_are_one_line(data, tmp_path, capsys, argv, message):
    err = one_line_refusal("attack", [*argv, "--out", str(tmp_path / "out")], capsys, tmp_path)
    assert message in err and err.rstrip().endswith("--help` lists the flags"), err


def test_a_config_file_that_is_not_text_is_named(data, tmp_path, capsys):
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\xff\xfe\x00epochs: 1\x80")
    err = one_line_refusal("attack", ["--config", str(binary), "--data-root", str(data), "--out",
                                      str(tmp_path / "out")], capsys, tmp_path / "out")
    assert "is not a text file" in err


@pytest.mark.parametrize("device", ["bogus", "-1", "cuda:7", "tpu"])
def test_an_unknown_device_is_one_line_before_anything_is_written(data, tmp_path, capsys, device):
    err = one_line_refusal("attack", ["--device", device, "--preset", "mini", "--data-root", str(data), "--out",
                                      str(tmp_path / "out"), "--epochs", "1"], capsys, tmp_path / "out")
    assert "--device" in err or "CUDA is not available" in err


def test_a_config_file_beats_the_presets_embedded_sample_section(tmp_path):
    """defaults < preset (with its embedded_sample section) < --config < flags, whatever the data found."""
    config = tmp_path / "config.yaml"
    config.write_text("epochs: 1\n")
    empty = tmp_path / "empty"
    empty.mkdir()  # no data here: the mini preset falls back to the embedded sample and its section
    resolved = resolve("attack", defaults(attack_job_settings()),
                       argparse.Namespace(preset="mini", config=str(config), data_root=str(empty)))
    assert resolved["epochs"] == 1 and "embedded sample is used" in resolved["recipe_note"]
    config.write_text("epochs: abc\n")
    with pytest.raises(UserError, match="--epochs must be an integer >= 1, got 'abc'"):
        from core.jobs import validate_job

        validate_job(resolve("attack", defaults(attack_job_settings()),
                             argparse.Namespace(preset="mini", config=str(config), data_root=str(empty))),
                     attack_job_settings())


# -- data that disagrees with itself ----------------------------------------------------------------------------
def test_a_test_split_without_a_class_is_refused_with_the_class_names(tmp_path):
    import shutil
    import tarfile

    write_tree(tmp_path / "data", per_class=1)
    shutil.rmtree(tmp_path / "data" / "CIFAR10" / "test" / "class0")  # labels would shift by one
    with pytest.raises(UserError, match="missing in test: class0; only in test: none"):
        load_split("CIFAR10", "test", tmp_path / "data")
    with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:  # the same data packed
        tar.add(tmp_path / "data" / "CIFAR10", arcname="CIFAR10")
    with pytest.raises(UserError, match="missing in test: class0"):
        load_split("CIFAR10", "test", tmp_path / "data.tar.gz")
    assert load_split("CIFAR10", "test", tree_root(tmp_path)).classes[0] == "class0"


def tree_root(tmp_path):
    write_tree(tmp_path / "whole", per_class=1)
    return tmp_path / "whole"


# -- files that are not what they claim ----------------------------------------------------------------------
@pytest.mark.parametrize("pattern, message", [
    (lambda: torch.rand(7, 32, 32), "of 1 or 3 channels"),
    (lambda: torch.full((3, 32, 32), float("nan")), "holds NaN or infinite values"),
])
@pytest.mark.parametrize("script", ["attack", "refine"])
def test_a_trigger_tensor_that_is_no_image_is_one_line(data, tmp_path, capsys, pattern, message, script):
    trigger = tmp_path / "trigger.pth"
    torch.save({"pattern": pattern()}, trigger)
    argv = ["--trigger", str(trigger), "--data-root", str(data), "--out", str(tmp_path / "out"), "--preset", "mini"]
    if script == "refine":
        argv += ["--model-path", str(trigger), "--attack", "BadNets", "--tlabel", "0"]
    err = one_line_refusal(script, argv, capsys, tmp_path / "out")
    assert message in err


def test_a_toolkit_checkpoint_whose_spec_lacks_num_classes_is_named(data, tmp_path, capsys):
    from core.checkpoint import FORMAT, load_classifier
    from core.models import build_classifier

    model = build_classifier("ResNet18", "CIFAR10", 10, width=4)
    spec = {k: v for k, v in model.spec.items() if k != "num_classes"}
    torch.save({"format": FORMAT, "spec": spec, "state_dict": model.net.state_dict()}, tmp_path / "m.pth")
    with pytest.raises(UserError, match="spec lacks num_classes"):
        load_classifier(tmp_path / "m.pth")
    err = one_line_refusal("refine", ["--model-path", str(tmp_path / "m.pth"), "--data-root", str(data),
                                      "--out", str(tmp_path / "out")], capsys, tmp_path / "out")
    assert "spec lacks num_classes" in err


@pytest.mark.parametrize("flag, value", [("--width", "1e12"), ("--epochs", "1e30"), ("--seed", "1e30"),
                                         ("--wanet-k", "1e9")])
def test_sizes_written_as_huge_floats_are_refused_by_their_check(data, tmp_path, capsys, flag, value):
    extra = ["--attack", "WaNet"] if flag == "--wanet-k" else []
    err = one_line_refusal("attack", [flag, value, *extra, "--data-root", str(data), "--out", str(tmp_path / "out")],
                           capsys, tmp_path / "out")
    assert f"{flag} must be an integer" in err


# -- outputs that cannot be written (the tests run as root here, so the OS errors are simulated) ----------------
def test_an_output_folder_that_cannot_be_written_is_one_line(capsys):
    import errno

    from core.cli import main_guard

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
    from conftest import attack

    assert run_main("attack", attack(data, tmp_path / "out"), capsys)[0] == 0
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(core.runlog, "point_latest", read_only)
    monkeypatch.setattr(core.jobs, "run_lock", read_only)  # taking the lock would write the lock file
    code, out, err = run_main("attack", attack(data, tmp_path / "out"), capsys)
    assert code == 0 and "already finished" in out and "not writable" in out, (out, err)


def test_shrinkpads_pad_size_is_checked_before_anything_is_written(data, tmp_path, capsys):
    from core.models import build_classifier
    from core.checkpoint import save_classifier

    model = tmp_path / "model.pth"
    save_classifier(model, build_classifier("ResNet18", "CIFAR10", 10, width=4))
    err = one_line_refusal("defend", ["--defense", "ShrinkPad", "--pad-size", "100", "--model-path", str(model),
                                      "--data-root", str(data), "--out", str(tmp_path / "out")],
                           capsys, tmp_path / "out")
    assert "--pad-size: ShrinkPad pad size must be in 0..31 for 32×32 images, got 100" in err


# -- compare.py's --sweep ---------------------------------------------------------------------------------------
def test_sweep_takes_a_setting_by_its_official_flag_and_refuses_what_is_no_setting():
    from core.compare import variants

    columns = variants(["ShrinkPad"], "tlabel=5")  # the official spelling of y_target; typed, not a string
    assert columns == [("ShrinkPad y_target=5", "ShrinkPad", {"y_target": 5})]
    with pytest.raises(UserError, match="--sweep defense is not a setting of ShrinkPad"):
        variants(["ShrinkPad"], "defense=FT")
    with pytest.raises(UserError, match="--sweep device is not a setting"):
        variants(["ShrinkPad"], "device=cpu,cuda")


def test_a_corrupt_tar_gz_data_root_is_one_line(tmp_path, capsys):
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00garbage, not gzip")
    with pytest.raises(UserError, match="is not a readable .tar.gz of images"):
        load_split("CIFAR10", "train", archive)


@pytest.mark.parametrize("script, flag, value, message", [
    ("attack", "--width", "1000000000000", "--width must be an integer in [1, 512]"),
    ("refine", "--unet-channels", "1000000000000", "--unet-channels must be an integer in [1, 512]"),
])
def test_sizes_that_cannot_fit_are_bounded_by_their_declaration(data, tmp_path, capsys, script, flag, value, message):
    err = one_line_refusal(script, [flag, value, "--data-root", str(data), "--out", str(tmp_path / "out")], capsys,
                           tmp_path / "out")
    assert message in err
