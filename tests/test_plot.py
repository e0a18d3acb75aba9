"""core/plot.py: each figure command writes a PNG of its declared pixel size from tiny runs (hand-written
metrics.json, an untrained width-4 deployed model, the tiny image-folder CIFAR10 of conftest), and bad input is
one line and exit status 2 with nothing written."""
import json
import struct

import pytest
import torch
import yaml

from core import plot
from core.attacks import ATTACKS, BadNets
from core.cli import main_guard
from core.defenses import DeployedModel, LabelRemap, random_derangement, save_deployed
from core.models import UNet, build_classifier

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR chunk, after checking the signature; decodes it too."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert matplotlib.image.imread(path).shape[:2] == (height, width)  # the whole file decodes
    return width, height


def run_plot(argv, capsys) -> tuple[int, str, str]:
    """``python -m core.plot ARGV`` in this process, as its __main__ block runs it (through main_guard)."""
    capsys.readouterr()
    try:
        main_guard(lambda: plot.main([str(a) for a in argv]))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def evaluation(epoch, ba, asr):
    return {"epoch": epoch, "BA": ba, "ASR": asr}


def write_run(folder, config: dict, evaluations=(), final=None, no_defense=None, attack="BadNets"):
    """A run folder as the jobs leave it, as far as the figures read it: metrics.json and config.yaml."""
    folder.mkdir(parents=True)
    metrics = {"attack": {"attack": attack}, "evaluations": list(evaluations)}
    if final is not None:
        metrics["final"] = final
    if no_defense is not None:
        metrics["no_defense"] = no_defense
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(yaml.safe_dump({"attack": attack, **config}))
    return folder


@pytest.fixture(scope="module")
def refine_run(tmp_path_factory):
    """A defense run folder holding an untrained deployed REFINE model (width-4 ResNet-18, 10 classes, UNet(4),
    a derangement) of a BadNets model on CIFAR10: the figures need its parts, not a working defense."""
    folder = tmp_path_factory.mktemp("refine_res") / "mini_seed0_tiny"
    folder.mkdir()
    torch.manual_seed(0)
    classifier = build_classifier("ResNet18", "CIFAR10", 10, width=4)
    remap = LabelRemap(random_derangement(10, torch.Generator().manual_seed(0)))
    attack = BadNets(y_target=0, image_size=32)
    save_deployed(folder / "defended_model.pth", DeployedModel(classifier, UNet(4), remap), defense="REFINE",
                  dataset="CIFAR10", attack=attack.config(), trigger=attack.trigger_tensors())
    return folder


def test_curves_draws_defense_and_attack_runs(tmp_path, capsys):
    defended = write_run(tmp_path / "refine_res" / "run_a", {"defense": "REFINE"},
                         [evaluation(2, 40.0, 5.0), evaluation(4, 60.0, 2.0)], final=evaluation(4, 60.0, 2.0),
                         no_defense={"BA": 80.0, "ASR": 99.0})
    attacked = write_run(tmp_path / "attack" / "run_b", {}, [evaluation(5, 70.0, 90.0), evaluation(10, 80.0, 99.0)])
    out = tmp_path / "figures" / "curves.png"
    code, stdout, err = run_plot(["curves", defended, attacked, "--out", out], capsys)
    assert code == 0, err
    assert png_size(out) == (1100, 450)
    assert plot.run_label(defended) == "BadNets / REFINE / run_a"
    assert plot.run_label(attacked) == "BadNets / no defense / run_b"
    assert not list(out.parent.glob(".*.tmp"))  # written atomically: no temporary file left


def test_curves_takes_one_legend_label_per_run(tmp_path, capsys, monkeypatch):
    from matplotlib.axes import Axes
    runs = [write_run(tmp_path / name, {"defense": "REFINE"}, [evaluation(2, 40.0, 5.0)], final=evaluation(2, 40.0, 5.0))
            for name in ("a", "b")]
    seen, original = [], Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: seen.append(k.get("label")) or original(self, *a, **k))
    code, _, err = run_plot(["curves", *runs, "--labels", "CE", "distill", "--out", tmp_path / "c.png"], capsys)
    assert code == 0, err
    assert seen == ["CE", "CE", "distill", "distill"]  # BA and ASR panel of each run, in the runs' order
    code, _, err = run_plot(["curves", *runs, "--labels", "one", "--out", tmp_path / "d.png"], capsys)
    assert code == 2 and "one per run" in err and not (tmp_path / "d.png").exists()


def test_shrinkpad_one_point_per_pad_size(tmp_path, capsys):
    root = tmp_path / "defense_res" / "ShrinkPad"
    for pad, ba, asr in ((0, 80.0, 99.0), (2, 70.0, 20.0), (4, 60.0, 10.0)):
        config = {"defense": "ShrinkPad", "pad_size": pad, "model_path": "attack/m1/model.pth"}
        write_run(root / f"run_pad{pad}", config, final={"BA": ba, "ASR": asr}, no_defense={"BA": 80.0, "ASR": 99.0})
    write_run(root / "run_nc", {"defense": "NC", "model_path": "attack/m1/model.pth"}, final={"BA": 1.0, "ASR": 1.0})
    (root / "latest").symlink_to(root / "run_pad2")  # a pointer repeats a run: not a second point
    points = plot.shrinkpad_points([root])
    assert [[pad for pad, _, _ in series] for series in points.values()] == [[0, 2, 4]]  # NC's run is skipped
    out = tmp_path / "sp.png"
    code, _, err = run_plot(["shrinkpad", root, "--out", out], capsys)
    assert code == 0, err
    assert png_size(out) == (1100, 450)


def test_triggers_one_row_per_registered_attack(tmp_path, data, capsys):
    out = tmp_path / "triggers.png"
    code, stdout, err = run_plot(["triggers", "--data-root", data, "--count", 3, "--out", out], capsys)
    assert code == 0, err
    assert "CIFAR10 test" in stdout
    assert png_size(out) == (150 + 125 * 3, 75 + 125 * len(ATTACKS))  # label column + cells, title + rows


def test_triggers_from_python_on_synthetic_images(tmp_path, synthetic):
    images = synthetic(2, size=16).images
    out = plot.triggers_figure(images, tmp_path / "t.png", attacks=["BadNets", "WaNet"])
    assert png_size(out) == (150 + 125 * 2, 75 + 125 * 2)


def test_transformed_defaults_to_the_run_folder(refine_run, data, capsys):
    code, stdout, err = run_plot(["transformed", refine_run, "--data-root", data], capsys)
    assert code == 0, err
    assert png_size(refine_run / "transformed.png") == (150 + 100 * 10, 475)  # 10 classes × 4 rows


def test_tsne_two_panels(refine_run, data, tmp_path, capsys):
    out = tmp_path / "tsne.png"
    code, _, err = run_plot(["tsne", refine_run, "--data-root", data, "--count", 20, "--out", out], capsys)
    assert code == 0, err
    assert png_size(out) == (1200, 550)


@pytest.mark.parametrize("model", ["ResNet18", "ViT"])
def test_penultimate_features_are_what_the_head_reads(model):
    torch.manual_seed(0)
    classifier = build_classifier(model, "CIFAR10", 10, width=4).eval()
    x = torch.rand(3, 3, 32, 32)
    features = plot.penultimate_features(classifier, x)
    head = classifier.net.linear if model == "ResNet18" else classifier.net.head
    assert features.shape == (3, head.in_features)
    with torch.no_grad():
        assert torch.allclose(head(features), classifier(x), atol=1e-5)


def test_refusals_are_one_line(tmp_path, refine_run, data, capsys):
    empty = write_run(tmp_path / "run_without_evaluations", {"defense": "REFINE"})
    twice = tmp_path / "two_runs_of_pad_2"
    for name in ("a", "b"):
        write_run(twice / name, {"defense": "ShrinkPad", "pad_size": 2, "model_path": "m/model.pth"},
                  final={"BA": 1.0, "ASR": 1.0})
    out = ["--out", tmp_path / "x.png"]
    cases = [
        ["curves", tmp_path / "missing", *out],  # no such folder
        ["curves", empty, *out],  # nothing evaluated
        ["curves", tmp_path, *out],  # no metrics.json
        ["shrinkpad", empty, *out],  # no finished ShrinkPad run
        ["shrinkpad", twice, *out],  # one pad size twice
        ["tsne", empty, *out],  # no defended model
        ["tsne", refine_run, "--count", 2, "--data-root", data, *out],
        ["transformed", refine_run, "--data-root", data, "--out", tmp_path / "x.jpg"],  # not a PNG
        ["triggers", "--attacks", "NoSuchAttack", *out],
        ["curves", "--no-such-flag", empty],
        ["histogram"],  # no such figure
    ]
    for argv in cases:
        code, _, err = run_plot(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_without_evaluations", "two_runs_of_pad_2"]
