"""Settings are declared once: flags, defaults, checks, the hash's sections and docs/flags.md all come from the
declarations."""
import pytest

from core.attacks import ATTACKS
from core.cli import new_parser
from core.defenses import DEFENSES
from core.errors import UserError
from core.flags_doc import DOC, flags_markdown
from core.run_attack import attack_job_settings
from core.run_defense import defense_job_settings
from core.settings import SECTIONS, Setting, add_flags, check_value, defaults, hashed, nest, flatten, validate
from core.checks import integer


def every_job():
    yield "attack", attack_job_settings()
    for name, cls in DEFENSES.items():
        yield name, defense_job_settings(cls)


def test_docs_flags_md_is_generated_from_the_declarations():
    assert DOC.read_text() == flags_markdown(), "docs/flags.md is stale: run `python -m core.flags_doc`"


@pytest.mark.parametrize("job, settings", list(every_job()), ids=[name for name, _ in every_job()])
def test_every_setting_has_help_a_section_and_a_default_its_check_accepts(job, settings):
    for key, setting in settings.items():
        assert setting.help and setting.section in SECTIONS, key
        if setting.check is not None and setting.default is not None:
            check_value(key, setting, setting.default)  # raises if the default is not allowed


def test_flags_parse_values_and_leave_the_verdict_to_the_check():
    parser = new_parser("t")
    add_flags(parser, attack_job_settings())
    args = vars(parser.parse_args(["--epochs", "1e30", "--tlabel", "3", "--decay", "0.5", "--lr", "abc"]))
    assert args == {"epochs": 1e30, "y_target": 3, "gamma": 0.5, "lr": "abc"}  # official spellings are aliases
    with pytest.raises(UserError, match=r"^--epochs must be an integer >= 1, got 1e\+30$"):
        validate(args, attack_job_settings())
    with pytest.raises(UserError, match=r"^--lr must be a number > 0 \(at most 1e6\), got 'abc'$"):
        validate({"lr": "abc"}, attack_job_settings())


def test_refine_switches_set_their_setting():
    parser = new_parser("t")
    add_flags(parser, defense_job_settings(DEFENSES["REFINE"]))
    assert vars(parser.parse_args(["--no-supcon", "--no-remap", "--sup", "0.2"])) == {"lam": 0.2, "remap": False}
    assert vars(parser.parse_args(["--no-supcon"])) == {"lam": 0.0}


def test_the_run_section_stays_out_of_the_hash_and_config_yaml_is_nested():
    settings = attack_job_settings()
    assert {"device", "out", "compile", "eval_every", "data_root"}.isdisjoint(hashed(settings))
    assert {"seed", "epochs", "momentum", "y_target", "alpha", "dataset", "poisoned_rate", "label_smoothing",
            "train_size", "test_size"} <= hashed(settings)
    config = defaults(settings)
    nested = nest(config, settings)
    assert set(nested) <= set(SECTIONS) and nested["train"]["epochs"] == 150 and nested["run"]["device"] == "auto"
    assert flatten(nested) == config and flatten(config) == config


def test_each_attack_and_defense_declares_settings_of_its_own_kind():
    for cls in [*ATTACKS.values(), *DEFENSES.values()]:
        assert all(isinstance(s, Setting) for s in cls.settings.values()), cls.name
        assert isinstance(cls.version, int) and cls.version >= 1


def test_a_group_declared_twice_differently_is_an_error():
    from core.settings import merge

    with pytest.raises(ValueError, match="declared twice"):
        merge({"epochs": Setting(1, "a", integer(1))}, {"epochs": Setting(2, "a", integer(1))})
