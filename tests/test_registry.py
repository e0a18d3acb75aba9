"""A method is one file: a toy attack and a toy defense, each one class in one new file of a copy of the toolkit,
appear in attack.py --help and defend.py --list, have their settings checked, run, resume and appear in a
compare table, with no other edit. Also: the registries' names, aliases and order."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tree

ROOT = Path(__file__).resolve().parent.parent

TOY_ATTACK = '''
"""A toy attack: one corner pixel set to a grey level."""
import torch

from ..checks import number
from ..settings import Setting
from .base import Attack, register_attack


@register_attack
class ToyCorner(Attack):
    name = "ToyCorner"
    settings = {"toy_level": Setting(1.0, "ToyCorner: grey level of the corner patch", number(0, 1))}
    trigger_names = ("level",)

    def build_trigger(self):
        self.level = torch.tensor(float(self.toy_level))

    def apply_trigger(self, x):
        x = x.clone()
        x[..., -3:, -3:] = self.level
        return x
'''

TOY_DEFENSE = '''
"""A toy defense: a universal additive input shift trained to keep the model's own predictions."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import integer
from ..settings import Setting
from ..train import EpochState, fit, make_optimizer
from .base import Defense, defender_share, frozen_copy, register_defense
from .parts import DeployedModel, register_part


@register_part
class ToyShift(nn.Module):
    part_name = "toy-shift"

    def __init__(self, channels=3):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def part_spec(self):
        return {"channels": self.shift.shape[1]}

    def forward(self, x):
        return (x + self.shift).clamp(0, 1)


@register_defense
class ToyShiftDefense(Defense):
    name = "ToyShift"
    summary = "a universal input shift (a toy)"
    settings = {"toy_epochs": Setting(2, "ToyShift: epochs", integer(1), "train"), "data_fraction": defender_share(0.5)}

    def fit(self, model, data, ctx):
        frozen, shift = frozen_copy(model, ctx.device), ToyShift().to(ctx.device)
        opt = make_optimizer(shift.parameters(), "Adam", 0.01, weight_decay=0.0)

        def loss_fn(x, y, mods):
            with torch.no_grad():
                target = mods["model"](x).argmax(1)
            return F.cross_entropy(mods["model"](mods["shift"](x)), target), {}

        deployed = DeployedModel(frozen, shift)
        state = EpochState(ctx.state_path("toy.pth"), {"shift": shift}, opt, ctx.fingerprint)
        fit(loss_fn, {"shift": shift, "model": frozen}, data.images, data.labels, optimizer=opt,
            epochs=self.toy_epochs, batch_size=8, device=ctx.device, seed=ctx.seed, trainable=("shift",),
            state=state, evaluate=lambda epoch: ctx.evaluate(deployed, epoch, final=epoch == self.toy_epochs),
            eval_every=1, log=ctx.log)
        return deployed
'''

# Runs inside the copy and prints one JSON object of what it saw.
DRIVER = """
import contextlib, glob, io, json, sys
import attack, compare, defend
import core.run_attack, core.run_defense
from core.errors import UserError

data = sys.argv[1]
shared = ["--data-root", data, "--device", "cpu", "--test-size", "20", "--preset", "mini"]
common = [*shared, "--eval-every", "1"]
attack_argv = ["--attack", "ToyCorner", "--width", "4", "--epochs", "2", "--batch-size", "8", "--out", "attack", *common]
defense_argv = ["--defense", "ToyShift", "--attack", "ToyCorner", "--out", "defense_res", "--attack-dir", "attack",
                *common]
seen = {}


def printed(fn, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            fn(*args)
        except SystemExit:
            pass
    return out.getvalue()


def refusal(fn, argv):
    try:
        fn(argv)
    except UserError as exc:
        return str(exc)
    return None


def interrupted(fn, argv, module, calls):
    # stops in the evaluation after epoch 2, so the state of epoch 1 stays saved
    real, count = module.timed_ba_asr, []

    def stop(*args, **kwargs):
        count.append(1)
        if len(count) == calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    module.timed_ba_asr = stop
    try:
        fn(argv)
        return False
    except KeyboardInterrupt:
        return True
    finally:
        module.timed_ba_asr = real


seen["attack_help"] = printed(attack.main, ["--help"])
seen["defend_list"] = printed(defend.main, ["--list"])
seen["attack_refused"] = refusal(attack.main, [*attack_argv, "--toy-level", "3"])
seen["defense_refused"] = refusal(defend.main, [*defense_argv, "--toy-epochs", "0"])
seen["attack_interrupted"] = interrupted(attack.main, attack_argv, core.run_attack, 2)
attack.main(attack_argv)
seen["attack_log"] = open(glob.glob("attack/CIFAR10/ResNet18/ToyCorner/mini_seed0_*/log.txt")[0]).read()
seen["defense_interrupted"] = interrupted(defend.main, defense_argv, core.run_defense, 3)
defend.main(defense_argv)
seen["defense_log"] = open(glob.glob("defense_res/CIFAR10/ResNet18/ToyCorner/ToyShift/mini_seed0_*/log.txt")[0]).read()
open("attack.yaml", "w").write("width: 4\\nepochs: 2\\nbatch_size: 8\\n")
compare.main(["--attacks", "ToyCorner", "--defenses", "ToyShift", "--table-only", "--attack-config", "attack.yaml",
              "--out-table", "table", "--attack-dir", "attack", "--defense-dir", "defense_res", *shared])
seen["table"] = open("table.md").read()
open("other.yaml", "w").write("width: 4\\nepochs: 2\\nbatch_size: 8\\nmomentum: 0.5\\n")
seen["other_momentum"] = printed(compare.main, ["--attacks", "ToyCorner", "--defenses", "ToyShift", "--table-only",
                                                "--attack-config", "other.yaml", "--out-table", "other", "--attack-dir",
                                                "attack", "--defense-dir", "defense_res", *shared])
print("SEEN " + json.dumps(seen))
"""


@pytest.fixture(scope="module")
def toolkit_copy(tmp_path_factory):
    """The toolkit's code and presets copied under a temporary folder, plus the two new files and tiny data."""
    root = tmp_path_factory.mktemp("toolkit")
    for name in ("attack.py", "defend.py", "refine.py", "compare.py"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "core", root / "core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", root / "configs")
    (root / "core" / "attacks" / "toy_corner.py").write_text(TOY_ATTACK)
    (root / "core" / "defenses" / "toy_shift.py").write_text(TOY_DEFENSE)
    write_tree(root / "data", per_class=4)
    return root


def test_a_new_attack_and_a_new_defense_are_one_file_each(toolkit_copy):
    result = subprocess.run([sys.executable, "-c", DRIVER, str(toolkit_copy / "data")], cwd=toolkit_copy,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    seen = json.loads(result.stdout.split("SEEN ", 1)[1])
    assert "ToyCorner" in seen["attack_help"] and "--toy-level" in seen["attack_help"]
    assert "ToyShift" in seen["defend_list"] and "--toy-epochs" in seen["defend_list"]
    assert seen["attack_refused"] == "--toy-level must be a number in [0, 1], got 3"
    assert seen["defense_refused"] == "--toy-epochs must be an integer >= 1, got 0"
    assert seen["attack_interrupted"] and "resuming epoch from the end of epoch 1/2" in seen["attack_log"]
    assert seen["defense_interrupted"] and "from the end of epoch 1/2" in seen["defense_log"]
    row = next(line for line in seen["table"].splitlines() if line.startswith("| ToyCorner"))
    assert "ToyShift BA" in seen["table"] and "—" not in row, seen["table"]  # both cells found, none missing
    # --table-only matches the full resolved settings: a run of another momentum is not this cell, and it says why
    assert "ToyCorner / No Defense: — (no finished run of these settings; the newest other run" in seen["other_momentum"]
    assert "momentum: 0.9 != 0.5" in seen["other_momentum"], seen["other_momentum"]


def test_registries_know_names_aliases_and_the_papers_order():
    from core.attacks import ATTACKS
    from core.defenses import DEFENSES, defense_class
    from core.errors import UserError

    paper = ["Benign", "BadNets", "Blended", "WaNet", "Physical", "BATT", "LC", "Adaptive"]
    assert [name for name in ATTACKS if name in paper] == paper  # a new attack joins without editing this test
    assert ATTACKS.get("PhysicalBA").name == "Physical" and ATTACKS.get("labelconsistent").name == "LC"
    paper = ["REFINE", "BTI-DBF-P", "BTI-DBF-U", "NC", "ShrinkPad", "T-MR", "FT", "FT+REFINE"]
    assert [name for name in DEFENSES if name in paper] == paper
    assert defense_class("BTI-DBF(P)").name == "BTI-DBF-P" and defense_class("sp").name == "ShrinkPad"
    with pytest.raises(UserError, match="unknown defense 'Nope'; choose one of REFINE, BTI-DBF-P"):
        defense_class("Nope")
    with pytest.raises(ValueError, match="taken"):
        ATTACKS.register(type("Twin", (ATTACKS["BadNets"],), {"name": "Twin", "aliases": ("PhysicalBA",)}))
