"""Corrupt or incomplete data: a damaged archive, a CIFAR folder missing a batch, splits that disagree on their
classes. Each is named in one line; none is read as if it were whole."""
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from conftest import cifar_batches, write_tree
from core.data import load_split
from core.errors import UserError


def test_an_incomplete_or_damaged_cifar_folder_is_named(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    cifar_batches(folder, {"data": np.zeros((1, 3072), dtype=np.uint8), "labels": [0]})
    (folder / "data_batch_1").unlink()
    with pytest.raises(UserError, match="data_batch_1 is missing"):
        load_split("CIFAR10", "train", tmp_path / "data")
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]})[:20])
    with pytest.raises(UserError, match="test_batch is truncated or corrupt"):
        load_split("CIFAR10", "test", tmp_path / "data")


def test_a_corrupt_tar_gz_data_root_is_one_line(tmp_path):
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00garbage, not gzip")
    with pytest.raises(UserError, match="is not a readable .tar.gz of images"):
        load_split("CIFAR10", "train", archive)


def test_a_test_split_without_a_class_is_refused_with_the_class_names(tmp_path):
    write_tree(tmp_path / "data", per_class=1)
    shutil.rmtree(tmp_path / "data" / "CIFAR10" / "test" / "class0")  # labels would shift by one
    with pytest.raises(UserError, match="missing in test: class0; only in test: none"):
        load_split("CIFAR10", "test", tmp_path / "data")
    with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:  # the same data packed
        tar.add(tmp_path / "data" / "CIFAR10", arcname="CIFAR10")
    with pytest.raises(UserError, match="missing in test: class0"):
        load_split("CIFAR10", "test", tmp_path / "data.tar.gz")
    write_tree(tmp_path / "whole", per_class=1)
    assert load_split("CIFAR10", "test", tmp_path / "whole").classes[0] == "class0"


@pytest.mark.parametrize("damage", [lambda png: b"", lambda png: png[:40]], ids=["empty file", "cut short"])
def test_a_damaged_picture_in_a_folder_tree_is_named(tmp_path, damage):
    write_tree(tmp_path / "data", per_class=1)
    picture = tmp_path / "data" / "CIFAR10" / "train" / "class2" / "0.png"
    picture.write_bytes(damage(picture.read_bytes()))
    (tmp_path / "data" / "CIFAR10" / "train" / "class0" / "readme.txt").write_text("not a picture: not read")
    with pytest.raises(UserError, match=f"could not decode image {picture}; remove or replace the file"):
        load_split("CIFAR10", "train", tmp_path / "data")
