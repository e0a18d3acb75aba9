"""Every entry point's --help prints its flags: argparse formats help strings with %, so a stray % in a help or a
default (submitit's ``%j`` job folder) turns --help into a traceback."""
import pytest

from conftest import SCRIPTS, run_main


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_prints_its_help(script, capsys):
    code, out, err = run_main(script, ["--help"], capsys)
    assert code == 0, err
    assert "usage:" in out and "--preset" in out
