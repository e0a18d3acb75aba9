"""Untrusted pickles: data files and checkpoints are read without running the code a pickle can carry; anything
but the plain types they hold is refused with one line naming the file."""
import os

import pytest
import torch

from conftest import cifar_batches
from core.checkpoint import safe_load
from core.data import load_split
from core.errors import UserError


class _Payload:
    """Unpickling this would create ``marker``: the code a hostile file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_cifar_batch_that_carries_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    cifar_batches(tmp_path / "data" / "cifar-10-batches-py", {"data": _Payload(marker), "labels": [0]})
    with pytest.raises(UserError, match=r"test_batch is not a CIFAR-10 batch \(it names posix\.mkdir\); refused"):
        load_split("CIFAR10", "test", tmp_path / "data")
    assert not marker.exists(), "the payload ran"
    train = load_split("CIFAR10", "train", tmp_path / "data")  # the numpy arrays of a real batch still load
    assert train.images.shape == (10, 3, 32, 32)


def test_a_checkpoint_that_carries_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="contains pickled Python objects, which are refused for safety"):
        safe_load(tmp_path / "evil.pth")
    assert not marker.exists(), "the payload ran"
