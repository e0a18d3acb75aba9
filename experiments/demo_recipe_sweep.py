"""Recipe search for the CPU demo, run on a GPU: which data size, attack budget and REFINE recipe show the
method best within a fixed CPU-time budget?

Accuracy after a given number of images seen does not depend on the device, so a GPU can try many
candidate recipes (several processes at once) whose CPU cost is known from benchmarks/benchmark_*.py.
Every run appends one JSON line (config, BA/ASR after each epoch, GPU wall time) to $OUT/sweep.jsonl.

    python experiments/demo_recipe_sweep.py --archive .device_data/cifar10-jpeg.tar.gz --workers 8
    python experiments/demo_recipe_sweep.py --archive ... --smoke        # a one-minute CPU check of the script

Data candidates are the first n images of each class (file order), as the embedded sample is built.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(os.environ.get("SWEEP_CORE", Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(ROOT))


def first_per_class(split, n):
    import torch

    keep = torch.cat([(split.labels == c).nonzero().flatten()[:n] for c in split.labels.unique()])
    return split.subset(keep.sort().values)


def prepare(archive, cache, smoke):
    import torch
    from core.data import load_split

    if Path(cache).is_file():
        return
    train = load_split("CIFAR10", "train", archive)
    test = load_split("CIFAR10", "test", archive)
    if smoke:
        train, test = first_per_class(train, 60), first_per_class(test, 20)
    torch.save({"train": (train.images, train.labels), "test": (test.images, test.labels)}, cache)


def load(cache, per_class_train, per_class_test):
    import torch
    from core.data import Split

    blob = torch.load(cache, weights_only=True)
    train = Split(*blob["train"], tuple(str(i) for i in range(10)), "cifar")
    test = Split(*blob["test"], tuple(str(i) for i in range(10)), "cifar")
    return first_per_class(train, per_class_train), first_per_class(test, per_class_test)


def run_attack_job(job, cache, out_dir, device):
    import torch
    from core.attacks import BadNets
    from core.metrics import ba_asr
    from core.models import build_classifier
    from core.train import train_classifier

    torch.set_num_threads(2)
    t0 = time.time()
    train, test = load(cache, job["per_class"], job["test_per_class"])
    attack = BadNets(y_target=0, poisoned_rate=0.1, seed=job["seed"])
    poisoned_train, _ = attack.poison_train(train)
    poisoned_test = attack.poison_test(test)
    torch.manual_seed(job["seed"])
    model = build_classifier("ResNet18", "CIFAR10", 10, job["width"], "cifar10")
    curve = []

    def evaluate(epoch):
        m = ba_asr(model, test, poisoned_test, 1024, device)
        curve.append({"epoch": epoch, "BA": round(m["BA"], 2), "ASR": round(m["ASR"], 2)})
        return m

    train_classifier(model, poisoned_train, epochs=job["epochs"], batch_size=job["batch_size"], lr=job["lr"],
                     schedule="onecycle", label_smoothing=0.1, augment=job["augment"], device=device,
                     amp=False, seed=job["seed"], evaluate=evaluate, eval_every=1, log=lambda m: None)
    torch.save(model.cpu().state_dict(), Path(out_dir) / f"{job['name']}.pt")
    return {**job, "curve": curve, "gpu_s": round(time.time() - t0, 1)}


def run_refine_job(job, cache, out_dir, device):
    import torch
    from core.attacks import BadNets
    from core.defenses import REFINE
    from core.models import UNet, build_classifier

    torch.set_num_threads(2)
    t0 = time.time()
    a = job["attack_job"]
    train, test = load(cache, a["per_class"], a["test_per_class"])
    poisoned_test = BadNets(y_target=0, poisoned_rate=0.1, seed=a["seed"]).poison_test(test)
    model = build_classifier("ResNet18", "CIFAR10", 10, a["width"], "cifar10")
    model.load_state_dict(torch.load(Path(out_dir) / f"{a['name']}.pt", weights_only=True))
    g = torch.Generator().manual_seed(job["seed"])
    count = min(len(train), job["unlabeled"])
    unlabeled = train.images[torch.randperm(len(train), generator=g)[:count]]
    torch.manual_seed(job["seed"])
    defense = REFINE(UNet(job["unet"]), model.eval(), 10, seed=job["seed"], loss="ce", lam=job["lam"],
                     device=device, amp=False)
    curve = []

    def evaluate(epoch):
        m = defense.test(test, poisoned_test, 1024)
        curve.append({"epoch": epoch, "BA": round(m["BA"], 2), "ASR": round(m["ASR"], 2)})
        return m

    defense.train(unlabeled, epochs=job["epochs"], batch_size=job["batch_size"], lr=job["lr"], optimizer="Adam",
                  weight_decay=0.0, schedule="onecycle", augment=job["augment"],
                  pseudo_labels=job["pseudo"], evaluate=evaluate, eval_every=1, log=lambda m: None)
    return {**{k: v for k, v in job.items() if k != "attack_job"}, "attack": a["name"], "curve": curve,
            "gpu_s": round(time.time() - t0, 1)}


def attack_jobs(smoke):
    jobs = []
    # budget in images seen: ~140k is about 5.5 min of a width-16 ResNet-18 on 2 cores (~430 img/s)
    for per_class in (1000, 2500, 5000):
        for budget in (110_000, 140_000):
            epochs = max(1, round(budget / (10 * per_class)))
            jobs.append({"name": f"atk_n{per_class}_b{budget // 1000}k", "per_class": per_class, "test_per_class": 200,
                         "epochs": epochs, "width": 16, "batch_size": 128, "lr": 0.1, "augment": "flip", "seed": 0})
    if smoke:
        jobs = [{**j, "per_class": 60, "test_per_class": 20, "epochs": 1, "width": 4} for j in jobs[:2]]
    return jobs


ROUND2 = [  # after round 1: UNet 16 > 8, batch 64 > 128, lr 2e-3 > 5e-3 > 1e-2
    {"unet": 16, "batch_size": 64, "lr": 2e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 186},
    {"unet": 16, "batch_size": 64, "lr": 1e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 186},
    {"unet": 16, "batch_size": 32, "lr": 2e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 170},
    {"unet": 16, "batch_size": 32, "lr": 1e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 170},
    {"unet": 16, "batch_size": 64, "lr": 2e-3, "pseudo": "clean", "augment": "refine", "cpu_img_s": 215},
    {"unet": 32, "batch_size": 64, "lr": 2e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 120},
    {"unet": 16, "batch_size": 64, "lr": 2e-3, "pseudo": "augmented", "augment": "crop_flip", "cpu_img_s": 190},
    {"unet": 16, "batch_size": 64, "lr": 5e-4, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 186},
]


def refine_jobs(attacks, smoke, recipes=None):
    # CPU training speed (img/s, 2 cores, eager, width-16 F): UNet 8: 224 (batch 64) / 259 (batch 128);
    # UNet 16: 186 / 187. A budget of ~420 s of CPU time is the target.
    recipes = recipes or [
        {"unet": 16, "batch_size": 128, "lr": 5e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 187},
        {"unet": 16, "batch_size": 64, "lr": 5e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 186},
        {"unet": 8, "batch_size": 64, "lr": 5e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 224},
        {"unet": 8, "batch_size": 128, "lr": 5e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 259},
        {"unet": 8, "batch_size": 64, "lr": 1e-2, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 224},
        {"unet": 8, "batch_size": 64, "lr": 5e-3, "pseudo": "clean", "augment": "refine", "cpu_img_s": 260},
        {"unet": 8, "batch_size": 64, "lr": 5e-3, "pseudo": "augmented", "augment": "flip", "cpu_img_s": 230},
        {"unet": 16, "batch_size": 64, "lr": 2e-3, "pseudo": "augmented", "augment": "refine", "cpu_img_s": 186},
    ]
    jobs = []
    for a in attacks:
        if not a["name"].endswith("140k"):
            continue
        n = 10 * a["per_class"]
        for i, r in enumerate(recipes):
            budget = 420 * r["cpu_img_s"]
            epochs = max(2, round(budget / n))
            unlabeled = min(n, budget // epochs)
            jobs.append({**r, "name": f"ref_{a['name']}_r{i}" + ("_round2" if recipes else ""), "epochs": epochs, "unlabeled": int(unlabeled),
                         "lam": 0.1, "seed": 0, "attack_job": a})
    if smoke:
        jobs = [{**j, "unet": 4, "epochs": 1, "unlabeled": 300} for j in jobs[:2]]
    return jobs


def round3_jobs():
    """Round 3: the chosen size (2,500 images per class) and recipe (UNet 16, batch 64, lr 2e-3), seeds and budgets."""
    base = {"per_class": 2500, "test_per_class": 200, "width": 16, "batch_size": 128, "lr": 0.1, "augment": "flip"}
    attacks = [{**base, "name": f"atk3_e{e}_s{s}", "epochs": e, "seed": s} for e, s in ((5, 0), (6, 0), (6, 1))]
    recipe = {"unet": 16, "batch_size": 64, "lr": 2e-3, "augment": "refine", "lam": 0.1}
    refines = []
    for a, epochs, unlabeled, pseudo, seed in [
        (attacks[1], 3, 25000, "augmented", 0), (attacks[1], 3, 25000, "augmented", 1),
        (attacks[1], 3, 25000, "clean", 0), (attacks[1], 3, 25000, "clean", 1),
        (attacks[1], 4, 21250, "augmented", 0), (attacks[1], 4, 21250, "augmented", 1),
        (attacks[1], 4, 21250, "clean", 0), (attacks[1], 4, 21250, "clean", 1),
        (attacks[0], 4, 22500, "augmented", 0), (attacks[0], 4, 22500, "augmented", 1),
        (attacks[2], 3, 25000, "augmented", 0),
    ]:
        refines.append({**recipe, "name": f"ref3_{a['name']}_e{epochs}_u{unlabeled}_{pseudo}_s{seed}", "epochs": epochs,
                        "unlabeled": unlabeled, "pseudo": pseudo, "seed": seed, "attack_job": a})
    return attacks, refines


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", required=True)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--round", type=int, default=1, help="2: the second set of REFINE recipes")
    p.add_argument("--stage", choices=["attack", "refine", "both"], default="both")
    args = p.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(os.environ.get("OUT", "sweep_out"))
    work = Path(os.environ.get("SWEEP_WORK", "sweep_work"))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cifar.pt"
    t0 = time.time()
    prepare(args.archive, cache, args.smoke)
    print(f"data ready in {time.time() - t0:.0f} s", flush=True)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    attacks = attack_jobs(args.smoke)
    if args.round == 2:
        attacks = [a for a in attacks if a["name"].endswith("140k")]
    with open(out / "sweep.jsonl", "a") as log, ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        stages = []
        if args.stage in ("attack", "both"):
            stages.append((run_attack_job, attacks))
        if args.stage in ("refine", "both"):
            stages.append((run_refine_job, None))
        if args.round == 3:
            stages = list(zip((run_attack_job, run_refine_job), round3_jobs()))
        for fn, jobs in stages:
            jobs = jobs if jobs is not None else refine_jobs(attacks, args.smoke, ROUND2 if args.round == 2 else None)
            futures = {pool.submit(fn, j, str(cache), str(work), device): j["name"] for j in jobs}
            for f in as_completed(futures):
                try:
                    result = f.result()
                except Exception as exc:  # noqa: BLE001 - record and go on with the other runs
                    result = {"name": futures[f], "error": repr(exc)[:500]}
                log.write(json.dumps(result) + "\n")
                log.flush()
                last = result.get("curve", [{}])[-1]
                print(f"[{time.time() - t0:5.0f} s] {result['name']}: {last} {result.get('error', '')}", flush=True)


if __name__ == "__main__":
    main()
