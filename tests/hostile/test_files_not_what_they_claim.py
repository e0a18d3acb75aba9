"""Files that are not what their flag says: a trigger tensor that is no image, a toolkit checkpoint whose spec is
incomplete (as the model to defend or as LC's Benign model). One line naming the file, nothing written."""
import pytest
import torch

from conftest import one_line_refusal
from core.checkpoint import FORMAT, load_classifier
from core.errors import UserError
from core.models import build_classifier


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
    model = build_classifier("ResNet18", "CIFAR10", 10, width=4)
    spec = {k: v for k, v in model.spec.items() if k != "num_classes"}
    torch.save({"format": FORMAT, "spec": spec, "state_dict": model.net.state_dict()}, tmp_path / "m.pth")
    with pytest.raises(UserError, match="spec lacks num_classes"):
        load_classifier(tmp_path / "m.pth")
    for script, flags in [("refine", ["--model-path", str(tmp_path / "m.pth")]),
                          ("attack", ["--attack", "LC", "--benign-model", str(tmp_path / "m.pth"), "--width", "4"])]:
        err = one_line_refusal(script, [*flags, "--data-root", str(data), "--out", str(tmp_path / "out")], capsys,
                               tmp_path / "out")
        assert "spec lacks num_classes" in err, (script, err)


def test_a_model_of_nan_weights_is_refused_before_anything_is_written(data, tmp_path, capsys):
    from core.checkpoint import save_classifier

    model = build_classifier("ResNet18", "CIFAR10", 10, width=4)
    with torch.no_grad():
        model.net.conv1.weight[0, 0, 0, 0] = float("nan")
    save_classifier(tmp_path / "nan.pth", model)
    for script, flags in [("refine", []), ("defend", ["--defense", "FT"])]:
        err = one_line_refusal(script, [*flags, "--model-path", str(tmp_path / "nan.pth"), "--data-root", str(data),
                                        "--out", str(tmp_path / "out")], capsys, tmp_path / "out")
        assert "nan.pth holds NaN or infinite weights (conv1.weight); it is no usable model" in err, err


def test_a_data_root_that_is_a_plain_file_is_refused_not_replaced_by_the_embedded_sample(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    err = one_line_refusal("attack", ["--preset", "mini", "--data-root", str(tmp_path / "notes.txt"), "--out",
                                      str(tmp_path / "out")], capsys, tmp_path / "out")
    assert "notes.txt is a file but not a .tar.gz/.tgz/.tar archive" in err, err
