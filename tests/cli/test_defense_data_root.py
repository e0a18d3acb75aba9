"""--defense-data-root: the defense learns from another tree of the same classes (the paper's Table 9, CINIC-10),
while the evaluation keeps --data-root's test split."""
import json
from pathlib import Path

import cv2
import pytest

import core.defenses.shrinkpad as shrinkpad
from conftest import attack, one_line_refusal, run_main, runs
from core.data import load_split
from core.runlog import describe_split


def _shifted_copy(source: Path, target: Path, drop_class: str | None = None) -> None:
    """``source``'s CIFAR10 tree blurred and recompressed as JPEG (another distribution of the same classes)."""
    for image in sorted(source.glob("CIFAR10/*/*/*.png")):
        if drop_class and image.parent.name == drop_class:
            continue
        out = target / image.relative_to(source / "CIFAR10").with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.GaussianBlur(cv2.imread(str(image)), (3, 3), 0), [cv2.IMWRITE_JPEG_QUALITY, 60])


@pytest.fixture
def model(data, tmp_path, capsys):
    assert run_main("attack", attack(data, tmp_path / "attack"), capsys)[0] == 0
    return next(tmp_path.glob("attack/**/model.pth"))


def test_the_defense_learns_from_the_other_tree_and_is_evaluated_on_the_data_root(data, model, tmp_path, capsys,
                                                                               monkeypatch):
    other = tmp_path / "cinic"  # CINIC-10's own layout: <root>/train/<class>/, <root>/test/<class>/
    _shifted_copy(data, other)
    seen = []
    real_fit = shrinkpad.ShrinkPadDefense.fit

    def spying_fit(self, classifier, split, ctx):
        seen.append(split.images.clone())
        return real_fit(self, classifier, split, ctx)

    monkeypatch.setattr(shrinkpad.ShrinkPadDefense, "fit", spying_fit)
    argv = ["--defense", "ShrinkPad", "--preset", "mini", "--model-path", str(model), "--data-root", str(data),
            "--out", str(tmp_path / "defense"), "--device", "cpu", "--defense-data-root", str(other)]
    code, out, err = run_main("defend", argv, capsys)
    assert code == 0, err
    own, test = load_split("CIFAR10", "train", other), load_split("CIFAR10", "test", data)
    rows = {bytes(img.numpy()) for img in own.images}
    assert len(seen[0]) and all(bytes(img.numpy()) in rows for img in seen[0])  # its share of the other tree
    assert not (own.images == load_split("CIFAR10", "train", data).images).all()  # ... which differ from data's
    [folder] = runs(next((tmp_path / "defense").glob("*/*/*/ShrinkPad")))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["final"]["BA_total"] == len(test)  # evaluated on --data-root's test split
    settings = json.loads((folder / "run.json").read_text())["settings"]
    assert settings["data"]["defense_train"]["sha256"] == describe_split(own)["sha256"]
    assert str(other) in (folder / "log.txt").read_text()
    # without the flag: another run (the settings differ), fed from --data-root's own training set
    code, _, err = run_main("defend", argv[:-2], capsys)
    assert code == 0, err
    assert len(runs(folder.parent)) == 2


def test_a_defense_data_root_of_other_classes_is_refused_in_one_line(data, model, tmp_path, capsys):
    other = tmp_path / "other"
    _shifted_copy(data, other, drop_class=sorted(p.name for p in (data / "CIFAR10" / "train").iterdir())[0])
    err = one_line_refusal("defend", ["--defense", "ShrinkPad", "--preset", "mini", "--model-path", str(model),
                                      "--data-root", str(data), "--out", str(tmp_path / "defense"), "--device", "cpu",
                                      "--defense-data-root", str(other)], capsys, tmp_path / "defense")
    assert "--defense-data-root" in err and "same <class> folders" in err
