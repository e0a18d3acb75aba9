"""Preset resolution: layers in order, and the embedded-sample section chosen by the data that is found."""
import argparse

import pytest

from core.config import CONFIG_DIR, resolve
from core.errors import UserError
from core.run_attack import attack_job_settings
from core.run_defense import defaults_for
from core.settings import defaults

ATTACK_DEFAULTS = defaults(attack_job_settings())

REFINE_DEFAULTS = defaults_for("REFINE")


def args(**given):
    return argparse.Namespace(**given)


def make_cifar_tree(root):
    for split in ("train", "test"):
        (root / "CIFAR10" / split / "airplane").mkdir(parents=True)


def test_layers_apply_in_order_and_flags_win(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("lr: 0.05\nepochs: 9\n")
    config = resolve("attack", ATTACK_DEFAULTS, args(preset="mini", config=str(extra), epochs=2,
                                                     data_root=str(tmp_path)))
    assert config["width"] == 16  # preset
    assert config["lr"] == 0.05  # --config over the preset
    assert config["epochs"] == 2  # the flag over both


def test_unknown_option_in_a_preset_layer_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(UserError, match="unknown option.*epochz"):
        resolve("attack", ATTACK_DEFAULTS, args(config=str(bad)))


@pytest.mark.parametrize("task, defaults, expected", [
    ("attack", ATTACK_DEFAULTS, {"epochs": 5}),
    ("refine", REFINE_DEFAULTS, {"batch_size": 64, "lr": 0.002, "epochs": 5, "data_fraction": 0.85, "compile": False}),
])
def test_mini_preset_picks_its_sample_recipe_only_when_the_sample_is_the_data(tmp_path, task, defaults, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    on_sample = resolve(task, defaults, args(preset="mini", data_root=str(empty)))
    assert {k: on_sample[k] for k in expected} == expected
    assert "embedded sample is used" in on_sample["recipe_note"]

    full = tmp_path / "full"
    make_cifar_tree(full)
    on_full = resolve(task, defaults, args(preset="mini", data_root=str(full)))
    assert "section, meant for the small embedded sample, is not used" in on_full["recipe_note"]
    assert any(on_full[k] != v for k, v in expected.items())

    downloading = resolve(task, defaults, args(preset="mini", data_root=str(empty), download=True))
    assert "is not used" in downloading["recipe_note"]  # --download brings the full data set

    typed = resolve(task, defaults, args(preset="mini", data_root=str(empty), epochs=1))
    assert typed["epochs"] == 1  # a typed flag beats the section too

    assert resolve(task, defaults, args(preset="paper", data_root=str(empty)))["recipe_note"] is None


def test_a_per_attack_section_applies_to_that_attack_and_its_aliases_only(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("epochs: 6\nWaNet:\n  epochs: 12\nPhysical:\n  lr: 0.05\n")
    def resolved(**given):
        return resolve("attack", ATTACK_DEFAULTS, args(config=str(extra), data_root=str(tmp_path), **given))
    assert resolved(attack="WaNet")["epochs"] == 12
    assert resolved(attack="BadNets")["epochs"] == 6
    assert resolved(attack="PhysicalBA")["lr"] == 0.05  # an alias finds its attack's section
    assert resolved(attack="WaNet", epochs=3)["epochs"] == 3  # a typed flag still wins


def test_the_paper_preset_trains_backdoored_models_with_flips_only(tmp_path):
    config = resolve("attack", ATTACK_DEFAULTS, args(preset="paper", data_root=str(tmp_path)))
    assert config["augment"] == "flip" and ATTACK_DEFAULTS["augment"] == "flip"
    assert resolve("attack", ATTACK_DEFAULTS, args(preset="paper", augment="crop_flip"))["augment"] == "crop_flip"


def test_refine_follows_the_authors_supcon_and_crops_except_in_the_mini_preset(tmp_path):
    paper = resolve("refine", REFINE_DEFAULTS, args(preset="paper", data_root=str(tmp_path)))
    assert (paper["supcon_views"], paper["augment"]) == (2, "refine")  # the authors' code
    mini = resolve("refine", REFINE_DEFAULTS, args(preset="mini", data_root=str(tmp_path)))
    assert (mini["supcon_views"], mini["augment"]) == (1, "refine_clamp")  # what the mini recipe was tuned with


@pytest.mark.parametrize("variant", ["FT+REFINE", "T-MR"])
def test_refines_variants_run_refines_own_mini_recipe(tmp_path, variant):
    from core.defenses.refine import RefineDefense
    make_cifar_tree(tmp_path)
    refine = resolve("refine", REFINE_DEFAULTS, args(preset="mini", data_root=str(tmp_path)))
    config = resolve("defense", defaults_for(variant), args(preset="mini", defense=variant, data_root=str(tmp_path)))
    shared = set(RefineDefense.settings) & set(config)  # T-MR has no UNet settings
    assert len(shared) >= len(RefineDefense.settings) - 2
    assert {k: config[k] for k in shared} == {k: refine[k] for k in shared}  # a REFINE change reaches Tables 10, 13


def test_the_short_overlay_cuts_only_refines_epochs_and_compilation(tmp_path):
    make_cifar_tree(tmp_path)
    overlay = str(CONFIG_DIR / "overlays" / "refine_short.yaml")
    for task, name in (("refine", "REFINE"), ("refine", "REFINE-BB"), ("defense", "FT+REFINE"),
                       ("defense", "T-MR")):
        mini = resolve(task, defaults_for(name), args(preset="mini", defense=name, data_root=str(tmp_path)))
        short = resolve(task, defaults_for(name), args(preset="mini", defense=name, config=overlay,
                                                       data_root=str(tmp_path)))
        changed = {k for k in mini if mini[k] != short[k]}
        assert changed == {"epochs", "compile"} and (short["epochs"], short["compile"]) == (4, False)
        assert mini["epochs"] == 12
    ft = resolve("defense", defaults_for("FT"), args(preset="mini", defense="FT", config=overlay,
                                                    data_root=str(tmp_path)))
    assert ft == resolve("defense", defaults_for("FT"), args(preset="mini", defense="FT", data_root=str(tmp_path)))
