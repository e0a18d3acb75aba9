"""--download: torchvision's CIFAR-10 class against a tiny archive served from 127.0.0.1 (no internet)."""
import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.data import CIFAR10_CLASSES, load_split
from core.download import ensure_data
from core.errors import UserError
from conftest import run_main


try:  # skip, with the reason, where torchvision is missing or built for another torch
    import torchvision.datasets  # noqa: F401
    from core.download import download_cifar10
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"torchvision cannot be imported ({type(exc).__name__}: {exc})", allow_module_level=True)

PER_BATCH = 20  # images per data_batch_i and in test_batch


def make_archive(folder: Path) -> tuple[Path, dict]:
    """A valid, tiny cifar-10-python.tar.gz; returns its path and the arrays written per split."""
    rng = np.random.default_rng(0)
    written = {"train": ([], []), "test": ([], [])}
    members = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(PER_BATCH) % 10)]
        members[name] = pickle.dumps({"batch_label": name, "data": data, "labels": labels, "filenames": []})
        split = "test" if name == "test_batch" else "train"
        written[split][0].append(data.reshape(-1, 3, 32, 32))
        written[split][1].extend(labels)
    members["batches.meta"] = pickle.dumps({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": PER_BATCH,
                                            "num_vis": 3072})
    path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    expected = {split: (torch.from_numpy(np.concatenate(arrays)), torch.tensor(labels))
                for split, (arrays, labels) in written.items()}
    return path, expected


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serves a tiny CIFAR-10 archive on 127.0.0.1; yields (url, md5, expected tensors)."""
    served = tmp_path / "served"
    served.mkdir()
    archive, expected = make_archive(served)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{archive.name}"
        yield url, hashlib.md5(archive.read_bytes()).hexdigest(), expected
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_verifies_and_the_loader_reads_exactly_what_was_served(server, tmp_path):
    url, md5, expected = server
    root = tmp_path / "data"
    logs = []
    folder = download_cifar10(root, url=url, md5=md5, log=logs.append)
    assert folder == root / "cifar-10-batches-py"
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no archive, no temporary folder
    assert any("downloaded CIFAR-10 (md5 verified)" in line for line in logs)
    for split in ("train", "test"):
        loaded = load_split("CIFAR10", split, root)
        assert torch.equal(loaded.images, expected[split][0]) and torch.equal(loaded.labels, expected[split][1])
    assert len(load_split("CIFAR10", "train", root)) == 5 * PER_BATCH
    logs.clear()  # with data present, ensure_data downloads nothing
    ensure_data({"download": True, "dataset": "CIFAR10", "data_root": str(root)}, logs.append)
    assert logs and "already present" in logs[0]


@pytest.mark.parametrize("root_exists", [True, False])
def test_wrong_checksum_is_one_line_and_keeps_nothing(server, tmp_path, root_exists):
    url, md5, _ = server
    root = tmp_path / "data"
    if root_exists:
        root.mkdir()
    with pytest.raises(UserError, match="checksum") as info:
        download_cifar10(root, url=url, md5="0" * 32, log=lambda m: None)
    assert "\n" not in str(info.value) and "nothing was kept" in str(info.value)
    if root_exists:
        assert list(root.iterdir()) == []  # no archive, no partial folder, no temporary folder
    else:
        assert not root.exists()


def test_unreachable_server_is_one_line_and_keeps_nothing(server, tmp_path):
    url, md5, _ = server
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(UserError, match="could not download CIFAR-10") as info:
        download_cifar10(root, url=url.replace("cifar-10-python", "missing"), md5=md5, log=lambda m: None)
    assert "\n" not in str(info.value) and list(root.iterdir()) == []


def test_imagenet50_download_says_how_to_prepare_it(tmp_path):
    with pytest.raises(UserError, match="cannot be downloaded automatically.*docs/data.md"):
        ensure_data({"download": True, "dataset": "ImageNet50", "data_root": str(tmp_path)}, print)


def only_run(out: Path) -> Path:
    """The one run folder (the folder holding log.txt) under an output root."""
    logs = list(out.rglob("log.txt"))
    assert len(logs) == 1, logs
    return logs[0].parent


def test_cli_download_then_attack_then_refine_without_second_download(server, tmp_path, monkeypatch, capsys):
    # in this process (the scripts' main, as their __main__ runs it): three interpreter starts cost more than the runs
    url, md5, _ = server
    monkeypatch.setenv("REFINE_CIFAR10_URL", url)
    monkeypatch.setenv("REFINE_CIFAR10_MD5", "0" * 32)
    data = tmp_path / "data"
    common = ["--dataset", "CIFAR10", "--download", "--data-root", str(data), "--preset", "mini", "--test-size", "20"]
    code, _, err = run_main("attack", ["--attack", "BadNets", "--out", str(tmp_path / "attack"), *common], capsys)
    lines = err.strip().splitlines()  # torchvision's progress bar, then the error as one line
    assert code == 2 and lines[-1].startswith("error: downloaded CIFAR-10 archive failed its checksum"), err
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not data.exists() and not (tmp_path / "attack").exists()  # nothing kept, nothing written
    monkeypatch.setenv("REFINE_CIFAR10_MD5", md5)
    code, _, err = run_main("attack", ["--attack", "BadNets", "--out", str(tmp_path / "attack"), "--epochs", "1",
                                       "--width", "4", "--batch-size", "50", "--mean", "0.5,0.5,0.5", "--std",
                                       "0.25,0.25,0.25", *common], capsys)
    assert code == 0, err
    folder = only_run(tmp_path / "attack")
    log = (folder / "log.txt").read_text()
    assert f"downloading CIFAR-10 from {url}" in log and "downloaded CIFAR-10 (md5 verified)" in log
    assert f"CIFAR10 train from {data / 'cifar-10-batches-py'}: 100 images" in log  # not the embedded sample
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-py"]
    config = yaml.safe_load((folder / "config.yaml").read_text())["train"]  # the explicit normalization is recorded
    assert (config["normalization"], config["mean"], config["std"]) == ("custom", [0.5] * 3, [0.25] * 3)

    code, _, err = run_main("refine", ["--attack", "BadNets", "--attack-dir", str(tmp_path / "attack"), "--out",
                                       str(tmp_path / "refine"), "--epochs", "1", "--unet-channels", "4", "--compile",
                                       "false", *common], capsys)
    assert code == 0, err
    run = only_run(tmp_path / "refine")
    log = (run / "log.txt").read_text()
    assert "CIFAR10 already present" in log and "downloading" not in log
    config = yaml.safe_load((run / "config.yaml").read_text())["train"]  # the model's own normalization, as used
    assert (config["normalization"], config["mean"], config["std"]) == ("custom", [0.5] * 3, [0.25] * 3)
