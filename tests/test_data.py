import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from core.augment import random_crop_flip, random_grayscale, random_resized_crop_flip
from core.data import load_split
from core.errors import UserError
from conftest import one_line_refusal, write_tree

ROOT = Path(__file__).resolve().parent.parent


def test_folder_tree_and_tarball_give_the_same_tensors(tmp_path):
    write_tree(tmp_path / "tree")
    with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "tree" / "CIFAR10", arcname="CIFAR10")
    a = load_split("CIFAR10", "train", tmp_path / "tree")
    b = load_split("CIFAR10", "train", tmp_path / "data.tar.gz")
    assert a.images.shape == (30, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert (tmp_path / "tree" / "CIFAR10" / ".cache_CIFAR10_train.pt").is_file()
    assert torch.equal(load_split("CIFAR10", "train", tmp_path / "tree").images, a.images)  # from the cache


def test_a_damaged_decoding_cache_is_rebuilt_not_fatal(tmp_path):
    write_tree(tmp_path / "tree")
    first = load_split("CIFAR10", "test", tmp_path / "tree")
    cache = tmp_path / "tree" / "CIFAR10" / ".cache_CIFAR10_test.pt"
    cache.write_bytes(cache.read_bytes()[:100])  # truncated, e.g. by a crash of another tool
    again = load_split("CIFAR10", "test", tmp_path / "tree")
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert len(cache.read_bytes()) > 100  # rewritten whole


def test_missing_data_and_wrong_size_errors(tmp_path):
    missing = r"no CIFAR10 data found.*pass --download.*/CIFAR10/train/<class>/.*--data-root"
    with pytest.raises(UserError, match=missing) as info:
        load_split("CIFAR10", "train", tmp_path)
    assert "shared/" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"no ImageNet50 data found.*docs/data.md.*/ImageNet50/train/<class>/"):
        load_split("ImageNet50", "train", tmp_path)
    write_tree(tmp_path, per_class=1, size=20)
    with pytest.raises(UserError, match="20x20 but this dataset expects 32x32"):
        load_split("CIFAR10", "test", tmp_path)


def test_batched_augmentations_keep_range_and_shape():
    x = torch.rand(16, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    for out in (random_crop_flip(x, generator=g), random_resized_crop_flip(x, generator=g),
                random_grayscale(x, generator=g)):
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    gray = random_grayscale(x, p=1.0)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    shifted = random_crop_flip(x, padding=4, generator=g)
    # each output is a shifted (maybe mirrored) window of the zero-padded input: its centre survives somewhere
    assert (shifted != x).any()


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_errors_are_one_line(tmp_path, capsys):
    # every output goes under tmp_path, and a refused run must not even create its output folder
    out, refine_out = tmp_path / "attack", tmp_path / "refine"
    line = one_line_refusal("attack", ["--attack", "Nope", "--data-root", "/nonexistent", "--out", str(out)], capsys,
                            tmp_path)
    assert "--attack must be one of" in line and "got 'Nope'" in line
    line = one_line_refusal("attack", ["--attack", "BadNets", "--data-root", "/nonexistent", "--epochs", "1", "--out",
                                       str(out)], capsys, tmp_path)
    assert "no CIFAR10 data found under /nonexistent" in line
    line = one_line_refusal("refine", ["--attack", "Blended", "--attack-dir", "/nonexistent", "--data-root",
                                       "/nonexistent", "--out", str(refine_out)], capsys, tmp_path)
    assert "run `python attack.py" in line
    assert not out.exists() and not refine_out.exists()


def test_attack_then_refine_then_eval_end_to_end(tmp_path):
    write_tree(tmp_path / "data", per_class=4)
    common = ["--data-root", str(tmp_path / "data"), "--preset", "mini", "--test-size", "20"]
    r = run_cli("attack.py", "--attack", "BadNets", "--epochs", "1", "--width", "4", "--out", str(tmp_path / "attack"),
                *common)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "attack" / "CIFAR10" / "ResNet18" / "BadNets" / "latest"  # the run that finished last
    assert folder.resolve().name.startswith("mini_seed0_")
    for name in ("model.pth", "trigger.pth", "trigger_pattern.png", "config.yaml", "metrics.json", "log.txt",
                 "run.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["final"]["BA_total"] == 20 and metrics["final"]["ASR_total"] == 18  # balanced subset
    assert metrics["device"].startswith("cpu (")  # the machine, for the result tables
    code = json.loads((folder / "run.json").read_text())["code"]  # the commit that wrote it, outside the hash
    assert re.fullmatch(r"[0-9a-f]{7,}(\+changes)?|unknown", code) and f"code: {code}" in (folder / "log.txt").read_text()
    warned = "warning: ASR is only" in (folder / "log.txt").read_text()
    assert warned == (metrics["final"]["ASR"] < 50), "the log warns exactly when the backdoor did not take"
    r = run_cli("refine.py", "--attack", "BadNets", "--epochs", "1", "--unet-channels", "4", "--attack-dir",
                str(tmp_path / "attack"), "--out", str(tmp_path / "refine"), "--seed", "3", *common)
    assert r.returncode == 0, r.stderr
    [run] = (tmp_path / "refine" / "CIFAR10" / "ResNet18" / "BadNets").glob("mini_seed3_*")
    assert (run.parent / "latest").resolve() == run.resolve()
    no_defense = json.loads((run / "metrics.json").read_text())["no_defense"]
    assert json.loads((run / "metrics.json").read_text())["device"].startswith("cpu (")
    assert no_defense == {k: metrics["final"][k] for k in no_defense}, "same model and images, other seed"
    log = (run / "log.txt").read_text()
    assert log.index("no defense") < log.index("REFINE after epoch 1")
    mapping = json.loads((run / "label_mapping.json").read_text())["permutation"]
    assert all(p != j for j, p in enumerate(mapping))
    r = run_cli("refine.py", "--eval", str(run), "--data-root", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert f"BA {final['BA']:.2f}%" in r.stdout and f"ASR {final['ASR']:.2f}%" in r.stdout


def test_resized_crop_redraws_like_torchvision_or_clamps_as_asked():
    import math
    import random

    from core.augment import crop_sizes

    x = torch.zeros(1)
    w, h = crop_sizes(100_000, x, mode="redraw", generator=torch.Generator().manual_seed(0))
    assert (w <= 1).all() and (h <= 1).all() and ((w * h) >= 0.8 - 1e-6).all()  # a redrawn crop never clamps
    # torchvision's rule, written out per sample: the first of 10 draws that fits, else the whole image
    rng, total = random.Random(0), 0.0
    for _ in range(20_000):
        for _ in range(10):
            area, aspect = rng.uniform(0.8, 1.0), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if cw <= 1 and ch <= 1:
                total += cw * ch
                break
        else:
            total += 1.0
    assert float((w * h).mean()) == pytest.approx(total / 20_000, abs=0.003)
    cw, ch = crop_sizes(100_000, x, mode="clamp", generator=torch.Generator().manual_seed(0))
    clamped = ((cw == 1) | (ch == 1)).float().mean()
    assert 0.5 < float(clamped) < 0.8  # most draws are clamped, as the issue measured (about 63 %)
    assert (cw * ch < 0.8 - 1e-6).any()  # so clamped crops can fall below the asked minimum area
