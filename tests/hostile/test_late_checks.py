"""Late checks: every check runs before the first write. A refusal found after the data are loaded (ShrinkPad's pad
size against the image size, a damaged resumable state) leaves the output and the data folder untouched - the
decoded-data cache included - and an accepted run then writes that cache."""
import pytest

from conftest import attack, one_line_refusal, run_main, runs, write_tree
from core.checkpoint import save_classifier
from core.models import build_classifier


@pytest.fixture
def fresh(tmp_path):
    """A data tree no run has read yet (so without decoded caches) and a model file to defend."""
    write_tree(tmp_path / "data", per_class=2)
    save_classifier(tmp_path / "model.pth", build_classifier("ResNet18", "CIFAR10", 10, width=4))
    return tmp_path


def shrinkpad(root, pad_size):
    return ["--defense", "ShrinkPad", "--pad-size", str(pad_size), "--model-path", str(root / "model.pth"),
            "--data-root", str(root / "data"), "--out", str(root / "out"), "--device", "cpu"]


def caches(root):
    return sorted(p.name for p in (root / "data" / "CIFAR10").glob(".cache_*"))


def test_shrinkpads_pad_size_is_checked_before_anything_is_written(fresh, capsys):
    err = one_line_refusal("defend", shrinkpad(fresh, 100), capsys, fresh / "out", fresh / "data")
    assert "--pad-size: ShrinkPad pad size must be in 0..31 for 32×32 images, got 100" in err
    assert run_main("defend", shrinkpad(fresh, 1), capsys)[0] == 0
    assert caches(fresh) == [".cache_CIFAR10_test.pt", ".cache_CIFAR10_train.pt"]


def test_a_rerun_refused_by_its_damaged_state_writes_no_data_cache(fresh, capsys):
    # an attack that diverges in epoch 2 leaves a resumable state of epoch 1; then that state gets cut short
    argv = attack(fresh / "data", fresh / "out", "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--optimizer",
                  "SGD", "--schedule", "multistep", "--milestones", "1", "--gamma", "1e30")
    assert run_main("attack", argv, capsys)[0] == 2
    [run] = runs(fresh / "out" / "CIFAR10" / "ResNet18" / "BadNets")
    state = run / "state" / "train_state.pth"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    for cache in (fresh / "data" / "CIFAR10").glob(".cache_*"):
        cache.unlink()  # as if the data had been replaced since
    err = one_line_refusal("attack", argv, capsys, fresh / "out", fresh / "data")
    assert "train_state.pth is truncated or corrupt" in err and caches(fresh) == []
