"""The command line itself: argparse's refusals, config files that are not text, and Ctrl-C before the script has
even finished importing - each one line, never a usage block or a traceback."""
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, SCRIPTS, one_line_refusal


@pytest.mark.parametrize("argv, message", [
    (["--epochz", "3"], "unrecognized arguments: --epochz 3; `"),
    (["--epochs"], "argument --epochs/--epoch: expected one argument; `"),
    (["--epochs", "three"], "--epochs must be an integer >= 1, got 'three'"),
])
def test_argparse_refusals_are_one_line(data, tmp_path, capsys, argv, message):
    err = one_line_refusal("attack", [*argv, "--out", str(tmp_path / "out")], capsys, tmp_path)
    assert message in err, err


def test_a_config_file_that_is_not_text_is_named(data, tmp_path, capsys):
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\xff\xfe\x00epochs: 1\x80")
    err = one_line_refusal("attack", ["--config", str(binary), "--data-root", str(data), "--out",
                                      str(tmp_path / "out")], capsys, tmp_path / "out")
    assert "is not a text file" in err


# Ctrl-C that lands while PyTorch is loading, made deterministic: the import of torch itself raises it
INTERRUPTED_IMPORT = textwrap.dedent("""
    import runpy, sys

    class CtrlC:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                raise KeyboardInterrupt

    sys.meta_path.insert(0, CtrlC())
    sys.argv = [sys.argv[1], "--help"]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_ctrl_c_while_the_script_is_importing_is_one_line_and_exit_130(script):
    r = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT, f"{script}.py"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (130, "", "\ninterrupted while starting; nothing was written\n")
