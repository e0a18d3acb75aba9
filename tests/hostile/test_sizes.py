"""Sizes: numbers that cannot be sizes (floats, 1e30) and sizes no machine can hold are refused by their
declaration, in one line naming the flag, before a run folder exists."""
import pytest

from conftest import one_line_refusal


@pytest.mark.parametrize("flag, value", [("--width", "1e12"), ("--epochs", "1e30"), ("--seed", "1e30"),
                                         ("--wanet-k", "1e9"), ("--batch-size", "2.5")])
def test_sizes_written_as_huge_floats_are_refused_by_their_check(data, tmp_path, capsys, flag, value):
    extra = ["--attack", "WaNet"] if flag == "--wanet-k" else []
    err = one_line_refusal("attack", [flag, value, *extra, "--data-root", str(data), "--out", str(tmp_path / "out")],
                           capsys, tmp_path / "out")
    assert f"{flag} must be an integer" in err


@pytest.mark.parametrize("script, flag, value, message", [
    ("attack", "--width", "1000000000000", "--width must be an integer in [1, 512]"),
    ("attack", "--wanet-k", "1000000000", "--wanet-k must be an integer in [2, 224]"),
    ("refine", "--unet-channels", "1000000000000", "--unet-channels must be an integer in [1, 512]"),
    ("refine", "--seed", "100000000000000000000000000000", "--seed must be an integer in"),
])
def test_sizes_that_cannot_fit_are_bounded_by_their_declaration(data, tmp_path, capsys, script, flag, value, message):
    extra = ["--attack", "WaNet"] if flag == "--wanet-k" else []
    err = one_line_refusal(script, [flag, value, *extra, "--data-root", str(data), "--out", str(tmp_path / "out")],
                           capsys, tmp_path / "out")
    assert message in err, err
