"""Config precedence: built-in defaults < preset (with its embedded_sample section) < --config < flags, whatever
data is found, and a value from any layer passes the same check as a typed flag."""
import argparse

import pytest

from core.config import resolve
from core.errors import UserError
from core.jobs import validate_job
from core.run_attack import attack_job_settings
from core.settings import defaults


def resolved(config, data_root, **flags):
    return resolve("attack", defaults(attack_job_settings()),
                   argparse.Namespace(preset="mini", config=str(config), data_root=str(data_root), **flags))


def test_a_config_file_beats_the_presets_embedded_sample_section_and_flags_beat_both(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("epochs: 1\nlr: 0.5\n")
    empty = tmp_path / "empty"
    empty.mkdir()  # no data here: the mini preset falls back to the embedded sample and its section
    settings = resolved(config, empty)
    assert settings["epochs"] == 1 and "embedded sample is used" in settings["recipe_note"]
    assert resolved(config, empty, epochs=3, lr=0.25)["epochs"] == 3
    assert resolved(config, empty, epochs=3, lr=0.25)["lr"] == 0.25


@pytest.mark.parametrize("text, message", [("epochs: abc\n", "--epochs must be an integer >= 1, got 'abc'"),
                                           ("epochs: 1.5\n", "--epochs must be an integer >= 1, got 1.5"),
                                           ("epochs: true\n", "--epochs must be an integer >= 1, got True")])
def test_a_config_files_values_are_checked_like_flags_even_over_the_embedded_sample(tmp_path, text, message):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=message):
        validate_job(resolved(config, empty), attack_job_settings())


def test_an_unknown_config_section_is_refused_and_a_runs_own_config_yaml_replays(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text("CIFAR100:\n  epochs: 2\n")  # a misspelt data set: its epochs would be ignored silently
    with pytest.raises(UserError, match="unknown section.s. in config: CIFAR100; a section is named after a data"):
        resolved(config, empty)
    config.write_text("train:\n  epochs: 2\n  lr: 0.3\nmethod:\n  attack: WaNet\n")  # as a run writes config.yaml
    settings = resolved(config, empty)
    assert (settings["epochs"], settings["lr"], settings["attack"]) == (2, 0.3, "WaNet")
    config.write_text("train:\n  epochs: 2\n  bogus: 3\n")
    with pytest.raises(UserError, match="unknown option.s. in config: bogus"):
        resolved(config, empty)
