"""Tiny synthetic data for fast, deterministic tests (no real data set needed), and the toy backdoored model
that several test files defend (trained once per session, handed out as copies)."""
import copy
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# OpenMP's idle threads spin (GNU: 300,000 times) before they sleep: on 2 cores shared with other work a spinning
# thread holds the core its partner waits for, and the tiny kernels of these tests crawl. The toy model below, 2
# threads beside 3 busy processes: 21 s spinning, 12 s with 1,000 spins, 10 s with none (OMP_WAIT_POLICY=PASSIVE);
# on an idle machine 3.2, 3.7 and 5.3 s (waiting only: the same computation). libgomp reads it once, on loading:
# hence before the first import of torch.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent  # the checkout
sys.path.insert(0, str(ROOT))
import core.train  # noqa: E402,F401  (sets the CPU flags before PyTorch's threads start)
from core.data import Split  # noqa: E402
from core.cli import main_guard  # noqa: E402

torch.set_num_threads(2)


def make_synthetic(n: int, num_classes: int = 4, size: int = 32, seed: int = 0) -> Split:
    """Each class is a colour tint plus noise: learnable in a few epochs by a narrow network."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(123)) * 0.6 + 0.2
    labels = torch.arange(n) % num_classes
    images = colours[labels] + 0.04 * torch.randn(n, 3, size, size, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return Split(images, labels, tuple(f"c{i}" for i in range(num_classes)), "synthetic")


@pytest.fixture
def synthetic():
    return make_synthetic


@pytest.fixture(autouse=True, scope="session")
def checkout_stays_clean():
    """Tests write under tmp_path only: after the session, no new path may exist under the checkout's
    run-output folders (attack/, refine_res/, defense_res/)."""
    root = Path(__file__).resolve().parent.parent

    def outputs():
        return {str(p) for name in ("attack", "refine_res", "defense_res") for p in (root / name).rglob("*")}

    before = outputs()
    yield
    new = sorted(outputs() - before)
    assert not new, f"tests wrote into the checkout: {new[:5]}"


def seeds(*default: int) -> list[int]:
    """Seeds for a seed-sensitive test: ``default``, or those in $TEST_SEEDS ("0-3" or "0,1,2,3") to sweep more."""
    spec = os.environ.get("TEST_SEEDS", "").strip()
    if not spec:
        return list(default)
    if "-" in spec:
        lo, hi = spec.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in spec.split(",")]


def write_tree(root: Path, per_class: int = 3, size: int = 32, classes: int = 10) -> None:
    """A tiny image-folder CIFAR10 (random pixels, PNG) under ``root``: ``root/CIFAR10/{train,test}/class<c>/``."""
    import cv2

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / "CIFAR10" / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
                cv2.imwrite(str(folder / f"{i}.png"), img)


# -- torch.compile failing ---------------------------------------------------------------------------------
def _compiler_error():
    from torch._dynamo.exc import BackendCompilerFailed

    return BackendCompilerFailed("inductor", RuntimeError("no C++ compiler found"), None)


class _FailInBackward(torch.autograd.Function):
    """Identity forward; its backward fails as a compiled backward graph that cannot be built would."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise _compiler_error()


def broken_compile(where):
    """A stand-in for torch.compile whose compiled module fails in ``where`` (forward, backward - as a compiler
    that cannot build would -, oom, bug)."""
    def compile(module):
        def run(x):
            if where == "forward":
                raise _compiler_error()
            if where == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            if where == "bug":
                raise ValueError("a real bug in the model")
            return _FailInBackward.apply(module(x))
        return run
    return compile



# -- the toy backdoored model -----------------------------------------------------------------------------------
TOY_TARGET = 1  # not 0: a detector or vote that falls back to the first class must not pass by accident


@dataclass(frozen=True)
class ToyBackdoor:
    """A width-8 ResNet-18 (4 classes, 16×16 images, eval mode) with a BadNets backdoor (3×3 patch, target
    ``TOY_TARGET``), the clean splits it was made from and the poisoned test split (non-target, triggered)."""

    model: torch.nn.Module
    attack: object  # core.attacks.BadNets
    train: Split  # 400 clean training images (seed 1), before poisoning: a defender's benign data
    test: Split  # 200 clean test images (seed 2)
    poisoned_test: Split


def cifar_batches(folder: Path, test_entry) -> None:
    """A cifar-10-batches-py folder of five tiny training batches (2 black images each) and ``test_entry`` pickled
    as its test batch."""
    import pickle

    import numpy as np

    folder.mkdir(parents=True)
    good = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1], "batch_label": "x", "filenames": []}
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(good))
    (folder / "test_batch").write_bytes(pickle.dumps(test_entry))


def train_toy_backdoor(seed: int = 0) -> ToyBackdoor:
    """BadNets at 20 % on 400 synthetic 16×16 images, Adam 3e-3 one-cycle, 6 epochs, flips: BA and ASR 100 on
    this colour-coded task for every seed tried, 0-11 (test_training). Each file that defends it tuned its budget
    on it: REFINE takes the backdoor from ASR 100 to 0; NC flags the target alone for NC seeds 0-19 (600 images
    and 8 epochs, the former recipe of test_refine and test_training, left it unflagged for seed 2; 320 and 4
    epochs, NC's own, missed ASR 90 for training seed 7). One thread: bit-identical whichever test asks first
    (NC's module runs on one thread), and fast beside other work (tiny kernels)."""
    from core.attacks import BadNets
    from core.models import build_classifier
    from core.train import train_classifier

    train, test = make_synthetic(400, seed=1, size=16), make_synthetic(200, seed=2, size=16)
    attack = BadNets(y_target=TOY_TARGET, poisoned_rate=0.2, seed=seed, image_size=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = build_classifier("ResNet18", "CIFAR10", 4, width=8)
        train_classifier(model, attack.poison_train(train)[0], epochs=6, batch_size=32, lr=3e-3, optimizer="Adam",
                         weight_decay=0, schedule="onecycle", augment="flip", device="cpu", seed=seed,
                         log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)  # training leaves its last step's gradients: a defense must add none
    return ToyBackdoor(model.eval(), attack, train, test, attack.poison_test(test))


@pytest.fixture(scope="session")
def toy_backdoors():
    """A callable: each call returns a fresh deep copy of the toy backdoored model, its attack and data, trained
    once per session. For fixtures that outlive a test (a module's cached defense run); tests take
    ``toy_backdoor``."""
    trained = train_toy_backdoor()
    return lambda: copy.deepcopy(trained)


@pytest.fixture
def toy_backdoor(toy_backdoors) -> ToyBackdoor:
    """This test's own copy of the toy backdoored model (see :func:`train_toy_backdoor`): whatever it does to
    the model cannot reach another test."""
    return toy_backdoors()


# -- running the scripts in this process ---------------------------------------------------------------------
def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPTS = {name: _load_script(name) for name in ("attack", "refine", "defend", "compare", "reproduce")}


def snapshot(*roots: Path) -> dict:
    """path -> bytes (or symlink target) of everything under ``roots``; a missing root maps to None."""
    state = {}
    for root in roots:
        if not root.exists():
            state[str(root)] = None
            continue
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(folder) / name
                state[str(p)] = ("link", os.readlink(p)) if p.is_symlink() else (
                    p.read_bytes() if p.is_file() else "dir")
    return state


def run_main(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Runs ``<script>.py``'s main(argv) in this process as its ``__main__`` block does (through main_guard).

    Any exception other than SystemExit escapes and fails the test: that is the traceback a user would see.
    """
    capsys.readouterr()
    try:
        main_guard(lambda: SCRIPTS[script].main(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# -- tiny runs of attack.py ------------------------------------------------------------------------------------
def one_line_refusal(script: str, argv: list[str], capsys, *watched: Path) -> str:
    """Runs the script and checks the refusal promise: exit status 2, one line on stderr starting 'error: ', no
    traceback, and nothing under ``watched`` changed. Returns that line."""
    before = snapshot(*watched)
    code, out, err = run_main(script, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, (out, err)
    assert snapshot(*watched) == before, "a refused run wrote something"
    return err


def attack(data, out, *extra):
    """attack.py's argv for a one-epoch width-4 mini run on a tiny data tree."""
    return ["--data-root", str(data), "--out", str(out), "--preset", "mini", "--width", "4", "--epochs", "1",
            "--test-size", "20", "--device", "cpu", *extra]


def runs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink())


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A tiny image-folder CIFAR10 (4 random 32x32 images per class and split), shared by the tests that run the
    scripts on real files."""
    root = tmp_path_factory.mktemp("data")
    write_tree(root, per_class=4)
    return root
