"""Compares the weights of the runs of experiments/identity_runs.sh made by two checkouts (issue 21: the refactor
must not change what a run computes). Usage: python experiments/identity_compare.py BEFORE AFTER

Every model.pth / defended_model.pth below BEFORE is matched with the one at the same <DATASET>/<MODEL>/<ATTACK>
place below AFTER (the run folders' names differ: they hash the settings, which now hold the method versions);
prints, per file, whether every tensor is bit-identical, and exits 1 if any is not.
"""
import sys
from pathlib import Path

import torch


def tensors(blob, prefix=""):
    if isinstance(blob, torch.Tensor):
        yield prefix, blob
    elif isinstance(blob, dict):
        for key in sorted(blob, key=str):
            if key != "meta":
                yield from tensors(blob[key], f"{prefix}/{key}")


def products(root: Path) -> dict:
    found = {}
    for path in root.rglob("*.pth"):
        if path.name in ("model.pth", "defended_model.pth") and not path.parent.is_symlink():
            found[(path.relative_to(root).parent.parent, path.name)] = path
    return found


def main(before, after) -> int:
    old, new = products(Path(before)), products(Path(after))
    bad = 0
    for key in sorted(old, key=str):
        if key not in new:
            print(f"{key}: missing in {after}")
            bad += 1
            continue
        a = dict(tensors(torch.load(old[key], weights_only=True)))
        b = dict(tensors(torch.load(new[key], weights_only=True)))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        bad += not same
        print(f"{'/'.join(key[0].parts)}/{key[1]}: {len(a)} tensors, {'bit-identical' if same else 'DIFFERENT'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
