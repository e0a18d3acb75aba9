"""Devices that do not exist here: one line naming --device, before anything is written."""
import pytest

from conftest import one_line_refusal


@pytest.mark.parametrize("device", ["bogus", "-1", "cuda:7", "tpu"])
@pytest.mark.parametrize("script", ["attack", "refine"])
def test_an_unknown_device_is_one_line_before_anything_is_written(data, tmp_path, capsys, device, script):
    err = one_line_refusal(script, ["--device", device, "--preset", "mini", "--data-root", str(data), "--out",
                                    str(tmp_path / "out"), "--epochs", "1"], capsys, tmp_path / "out")
    assert "--device" in err or "CUDA is not available" in err
