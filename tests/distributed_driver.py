"""What tests/test_distributed.py runs under ``torchrun --nproc_per_node 2`` (gloo, CPU): every rank runs the same
code, rank 0 writes what it saw to ``OUT/result.json``.

    toy OUT          the toy backdoor of conftest (training through the one loop) twice, its sharded evaluation,
                     REFINE on it (REFINE_RECIPE); the trained weights to OUT/model.pth for the single-process comparison
    attack OUT ARGS  attack.py's main with ARGS; with DIE_AT_EVALUATION=k rank 1 dies in its k-th evaluation
"""
import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from core import distributed  # noqa: E402

# REFINE on the toy model, as test_distributed runs it in one process too (6 epochs on 200 images: BA 75, ASR 0)
REFINE_IMAGES = 200
REFINE_RECIPE = dict(epochs=6, batch_size=32, lr=5e-3, optimizer="Adam", weight_decay=0, schedule="onecycle",
                     log=lambda m: None)


def toy(out: Path) -> dict:
    from conftest import train_toy_backdoor
    from core.defenses.refine import REFINE
    from core.metrics import ba_asr
    from core.models import UNet

    first, second = train_toy_backdoor(0), train_toy_backdoor(0)
    identical = all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                       second.model.state_dict().values()))
    torch.manual_seed(0)
    defense = REFINE(UNet(8), first.model, num_classes=4, seed=0, loss="ce")
    defense.train(first.train.images[:REFINE_IMAGES], **REFINE_RECIPE)
    if distributed.is_main():
        torch.save(first.model.state_dict(), out / "model.pth")
    return {"identical": identical, "model": ba_asr(first.model, first.test, first.poisoned_test),
            "refine": defense.test(first.test, first.poisoned_test)}


def attack(argv: list[str]) -> dict:
    import core.run_attack
    from conftest import _load_script

    die_at = int(os.environ.get("DIE_AT_EVALUATION", "0"))
    real, calls = core.run_attack.timed_ba_asr, []

    def evaluation(*args, **kwargs):
        calls.append(1)
        if distributed.rank() == 1 and len(calls) == die_at:
            os._exit(9)  # a rank that dies without a word, as a killed process does
        return real(*args, **kwargs)

    core.run_attack.timed_ba_asr = evaluation
    _load_script("attack").main(argv)
    return {"evaluations": len(calls)}


if __name__ == "__main__":
    task, out = sys.argv[1], Path(sys.argv[2])
    distributed.setup(torch.device("cpu"))
    result = toy(out) if task == "toy" else attack(sys.argv[3:])
    if distributed.is_main():
        (out / "result.json").write_text(json.dumps({**result, "world": distributed.world()}))
