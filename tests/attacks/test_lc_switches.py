"""Label-Consistent's three fidelity switches (core/attacks/label_consistent.py, LC version 2): each value
changes the computation as its help says. Defaults: the authors' code (REFINE's attack.py with BackdoorBox's
LabelConsistent and torchattacks' PGD); the other value: this toolkit's LC version 1.

* ``lc_quantize``: floor (torchattacks' ``(x*255).type(uint8)``) vs round;
* ``lc_pgd_input``: PGD's [0, 1] images reach the clean classifier's network without (authors) or through its
  normalization;
* ``lc_init``: the LC model starts from the Benign model's network weights (authors) or a seeded fresh one,
  and the two choices are two run folders.
"""
import pytest
import torch

import core.attacks.label_consistent as lc_module
from core.attacks import LabelConsistent
from core.checkpoint import save_classifier
from core.data import to_float
from core.errors import UserError
from core.models import Classifier, build_classifier
from core.run_attack import AttackJob, attack_job_settings
from core.settings import defaults


def test_the_defaults_are_the_authors_code_and_the_version_is_bumped():
    attack = LabelConsistent()
    assert (attack.lc_pgd_input, attack.lc_quantize, attack.lc_init) == ("unnormalized", "floor", "benign")
    assert attack.starts_from_reference and not LabelConsistent(lc_init="fresh").starts_from_reference
    assert LabelConsistent.version == 2
    config = attack.config()  # recorded with the run, hence in its settings hash
    assert {config[k] for k in ("lc_pgd_input", "lc_quantize", "lc_init")} == {"unnormalized", "floor", "benign"}


# -- lc_quantize --------------------------------------------------------------------------------------------

def test_quantize_floor_truncates_and_round_rounds_a_known_float():
    x = torch.tensor([100.7, 100.2, 0.0, 255.0, 254.999]) / 255
    assert lc_module.to_uint8(x, "floor").tolist() == [100, 100, 0, 255, 254]
    assert lc_module.to_uint8(x, "round").tolist() == [101, 100, 0, 255, 255]
    # floor is exactly torchattacks' _to_uint for images in [0, 1]
    y = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lc_module.to_uint8(y, "floor"), (y * 255).type(torch.uint8))


class Brighter(torch.nn.Module):
    """Logits (mean, -mean) of the image: for label 0 the loss falls as pixels brighten, so one PGD step moves
    every pixel down by the step."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([m, -m], 1)


def test_quantize_switch_reaches_the_poisoned_images():
    # every pixel on the grid, away from 0; one step of 0.3 levels down lands at k - 0.3: floor k - 1, round k
    images = torch.randint(10, 245, (3, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.zeros(3, dtype=torch.int64)
    out = {}
    for quantize in ("floor", "round"):
        attack = LabelConsistent(y_target=0, lc_steps=1, lc_step=0.3, lc_quantize=quantize, clean_model=Brighter())
        out[quantize] = attack.prepare_poisoned(images, labels, torch.arange(3)).int()
    assert torch.equal(out["round"], images.int())
    assert torch.equal(out["floor"], images.int() - 1)


# -- lc_pgd_input -------------------------------------------------------------------------------------------

class Recorder(torch.nn.Module):
    """A stub network: remembers what it was fed, returns logits that depend on it."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("pgd_input", ["unnormalized", "normalized"])
def test_pgd_input_reaches_the_network_with_or_without_the_normalization(pgd_input):
    torch.manual_seed(0)
    net = Recorder()
    model = Classifier(net, {"model": "stub", "dataset_kind": "cifar", "num_classes": 2, "width": 1,
                             "normalization": "cifar10"})
    images = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    attack = LabelConsistent(y_target=0, image_size=8, lc_steps=1, lc_pgd_input=pgd_input, clean_model=model)
    attack.prepare_poisoned(images, torch.zeros(2, dtype=torch.int64), torch.arange(2))
    assert len(net.seen) == 1  # one PGD step: one forward pass, on the unperturbed images
    pixels = to_float(images)
    expected = pixels if pgd_input == "unnormalized" else model.normalize(pixels)
    assert not torch.allclose(model.normalize(pixels), pixels)  # the normalization really changes the input
    assert torch.allclose(net.seen[0], expected, atol=1e-6)


def test_pgd_input_switch_is_part_of_the_cache_key(tmp_path):
    model = build_classifier("ResNet18", "CIFAR10", 10, 4)
    images, labels = torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64)
    keys = {LabelConsistent(clean_model=model, lc_pgd_input=p, lc_quantize=q)._cache_key(images, labels)
            for p in ("unnormalized", "normalized") for q in ("floor", "round")}
    assert len(keys) == 4


# -- lc_init: through attack.py's job ------------------------------------------------------------------------

def lc_job(data, out, benign, **extra) -> AttackJob:
    config = {**defaults(attack_job_settings()), "data_root": str(data), "out": str(out), "attack": "LC",
              "width": 4, "epochs": 1, "test_size": 20, "device": "cpu", "benign_model": str(benign), **extra}
    job = AttackJob(config)
    job.plan()  # builds the model (no training)
    return job


def net_equal(a, b) -> bool:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].cpu()) for k in sa)


def test_lc_model_starts_from_the_benign_weights_only_with_the_switch(data, tmp_path):
    benign = build_classifier("ResNet18", "CIFAR10", 10, 4)
    with torch.no_grad():  # weights no seeded initialization gives, BatchNorm statistics included
        for t in benign.net.state_dict().values():
            if t.is_floating_point():
                t.normal_(generator=torch.Generator().manual_seed(t.numel()))
    save_classifier(tmp_path / "benign.pth", benign)
    authors = lc_job(data, tmp_path / "out", tmp_path / "benign.pth")
    ours = lc_job(data, tmp_path / "out", tmp_path / "benign.pth", lc_init="fresh")
    assert net_equal(authors.model, benign)
    assert not net_equal(ours.model, benign)
    torch.manual_seed(0)  # fresh: the seeded initialization, as before the switch
    assert net_equal(ours.model, build_classifier("ResNet18", "CIFAR10", 10, 4))
    # each choice is its own run folder (the setting is in the hashed settings)
    assert authors.settings["lc_init"] == "benign" and ours.settings["lc_init"] == "fresh"
    assert authors.folder != ours.folder


def test_lc_init_refuses_a_benign_model_of_another_width(data, tmp_path):
    save_classifier(tmp_path / "benign.pth", build_classifier("ResNet18", "CIFAR10", 10, 8))
    with pytest.raises(UserError, match="cannot start from .*width 4"):
        lc_job(data, tmp_path / "out", tmp_path / "benign.pth")
    lc_job(data, tmp_path / "out", tmp_path / "benign.pth", lc_init="fresh")  # PGD alone takes any width
