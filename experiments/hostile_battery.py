"""A battery of hostile inputs beyond the test suite's: each case runs a script in a fresh process and must end with
exit status 0 or 2 - status 2 with exactly one line on stderr and no traceback - and a refusal must leave the output
folder untouched. Prints one line per case and the failures at the end.

    python experiments/hostile_battery.py [WORKDIR]      # ~2 minutes on 2 cores
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def snapshot(root: Path):
    if not root.exists():
        return None
    return sorted((str(p), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def main():
    import torch

    from conftest import write_tree
    from core.checkpoint import save_classifier
    from core.models import build_classifier

    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="hostile_"))
    data = work / "data"
    write_tree(data, per_class=2)
    torch.manual_seed(0)
    model = work / "model.pth"
    save_classifier(model, build_classifier("ResNet18", "CIFAR10", 10, width=4))

    # a data tree with a class folder holding a non-image, a zero-byte file and a corrupt image
    bad_images = work / "bad_images"
    write_tree(bad_images, per_class=2)
    (bad_images / "CIFAR10/train/class0/readme.txt").write_text("not an image")
    (bad_images / "CIFAR10/train/class1/empty.png").write_bytes(b"")
    (bad_images / "CIFAR10/train/class2/cut.png").write_bytes(
        (bad_images / "CIFAR10/train/class2/0.png").read_bytes()[:40])
    empty_class = work / "empty_class"
    write_tree(empty_class, per_class=2)
    for f in (empty_class / "CIFAR10/train/class3").iterdir():
        f.unlink()
    gray = work / "gray"
    write_tree(gray, per_class=2)
    import cv2
    import numpy as np
    cv2.imwrite(str(gray / "CIFAR10/train/class0/0.png"), np.zeros((32, 32), np.uint8))  # one grey-scale picture
    big = work / "big"
    write_tree(big, per_class=2, size=40)  # 40×40 pictures in a CIFAR-10 tree

    a_file = work / "a_file"
    a_file.write_text("x")
    (work / "yaml_list.yaml").write_text("- 1\n- 2\n")
    (work / "yaml_python.yaml").write_text("epochs: !!python/object/apply:os.system ['echo pwned']\n")
    (work / "yaml_nested.yaml").write_text("train:\n  epochs: 1\n  bogus: 3\n")
    (work / "yaml_bomb.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c]\n")
    (work / "empty.yaml").write_text("")
    nan_model = work / "nan_model.pth"
    net = build_classifier("ResNet18", "CIFAR10", 10, width=4)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    save_classifier(nan_model, net)
    raw = work / "raw_state_dict.pth"
    torch.save(build_classifier("ResNet18", "CIFAR10", 10, width=8).net.state_dict(), raw)
    tensor_file = work / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    out = work / "out"
    common = ["--data-root", str(data), "--preset", "mini", "--device", "cpu", "--epochs", "1", "--width", "4",
              "--test-size", "20"]
    rcommon = ["--data-root", str(data), "--preset", "mini", "--device", "cpu", "--epochs", "1",
               "--unet-channels", "4", "--test-size", "20", "--model-path", str(model)]
    cases = [
        ("attack: --out is a file", "attack", [*common, "--out", str(a_file)]),
        ("attack: --data-root is a plain file", "attack", [*common, "--data-root", str(a_file)]),
        ("attack: --config is a folder", "attack", [*common, "--config", str(work)]),
        ("attack: --trigger is a folder", "attack", [*common, "--trigger", str(work)]),
        ("attack: --trigger a tensor of 3 values", "attack", [*common, "--trigger", str(tensor_file)]),
        ("attack: config is a YAML list", "attack", [*common, "--config", str(work / "yaml_list.yaml")]),
        ("attack: config with a python tag", "attack", [*common, "--config", str(work / "yaml_python.yaml")]),
        ("attack: config section with an unknown key", "attack", [*common, "--config", str(work / "yaml_nested.yaml")]),
        ("attack: config of nested aliases", "attack", [*common, "--config", str(work / "yaml_bomb.yaml")]),
        ("attack: empty config", "attack", [*common, "--config", str(work / "empty.yaml"), "--out", str(out / "e")]),
        ("attack: non-images in a class folder", "attack", [*common, "--data-root", str(bad_images)]),
        ("attack: an empty class folder", "attack", [*common, "--data-root", str(empty_class)]),
        ("attack: a grey-scale picture", "attack", [*common, "--data-root", str(gray), "--out", str(out / "g")]),
        ("attack: 40x40 pictures", "attack", [*common, "--data-root", str(big), "--out", str(out / "b")]),
        ("attack: --batch-size 10^12", "attack", [*common, "--batch-size", "1000000000000", "--out", str(out / "bs")]),
        ("attack: --eval-batch-size 10^12", "attack", [*common, "--eval-batch-size", "1000000000000",
                                                        "--out", str(out / "ebs")]),
        ("attack: --train-size 10^12", "attack", [*common, "--train-size", "1000000000000", "--out", str(out / "ts")]),
        ("attack: --milestones huge", "attack", [*common, "--milestones", "1000000000000000000000",
                                                 "--out", str(out / "ms")]),
        ("attack: --lr 1e308", "attack", [*common, "--lr", "1e308", "--out", str(out / "lr")]),
        ("attack: --lr 1e6, constant", "attack", [*common, "--lr", "1000000", "--schedule", "constant",
                                                  "--optimizer", "SGD", "--out", str(out / "lr6")]),
        ("attack: --poisoned-rate 1e-300", "attack", [*common, "--poisoned-rate", "1e-300", "--out", str(out / "pr")]),
        ("attack: --attack Adaptive --patch-opacity 0,0,0,0", "attack",
         [*common, "--attack", "Adaptive", "--patch-opacity", "0,0,0,0", "--out", str(out / "po")]),
        ("attack: --run-name with unicode", "attack", [*common, "--run-name", "läuft", "--out", str(out / "u")]),
        ("attack: --out with spaces", "attack", [*common, "--out", str(out / "with space")]),
        ("refine: --model-path is a folder", "refine", [*rcommon, "--model-path", str(work)]),
        ("refine: a raw state dict of another width", "refine", [*rcommon, "--model-path", str(raw)]),
        ("refine: a model of NaN weights", "refine", [*rcommon, "--model-path", str(nan_model),
                                                     "--out", str(out / "nan")]),
        ("refine: --attack-dir is a file", "refine", [*rcommon, "--attack-dir", str(a_file)]),
        ("refine: --batch-size 10^12", "refine", [*rcommon, "--batch-size", "1000000000000",
                                                  "--out", str(out / "rbs")]),
        ("refine: --data-fraction 1e-300", "refine", [*rcommon, "--data-fraction", "1e-300",
                                                      "--out", str(out / "rdf")]),
        ("refine: --temperature 1e-300", "refine", [*rcommon, "--temperature", "1e-300", "--out", str(out / "rt")]),
        ("refine: --lam 1e300", "refine", [*rcommon, "--lam", "1e300", "--out", str(out / "rl")]),
        ("defend: NC --nc-epochs 0", "defend", [*rcommon[:-2], "--defense", "NC", "--model-path", str(model),
                                                "--nc-epochs", "0"]),
        ("defend: BTI-DBF-U --rounds 10^12", "defend", ["--defense", "BTI-DBF-U", "--rounds", "1000000000000",
                                                        "--model-path", str(a_file)]),
        ("defend: FT on a NaN model", "defend", ["--defense", "FT", "--model-path", str(nan_model), "--data-root",
                                                 str(data), "--preset", "mini", "--device", "cpu", "--test-size", "20",
                                                 "--ft-epochs", "1", "--out", str(out / "ftnan")]),
        ("compare: --out-table is a folder", "compare", ["--attacks", "BadNets", "--defenses", "ShrinkPad",
                                                         "--table-only", "--out-table", str(work)]),
        ("compare: --sweep with empty value", "compare", ["--attacks", "BadNets", "--defenses", "ShrinkPad",
                                                          "--table-only", "--sweep", "pad_size="]),
        ("compare: --attacks repeated", "compare", ["--attacks", "BadNets", "BadNets", "--defenses", "ShrinkPad",
                                                    "--table-only", "--out-table", str(work / "t"),
                                                    "--data-root", str(data)]),
    ]
    failures = []
    for i, (name, script, argv) in enumerate(cases):
        if "--out" not in argv and script != "compare":
            argv = [*argv, "--out", str(out / f"case{i}")]
        if script == "compare" and "--attack-dir" not in argv:
            argv = [*argv, "--attack-dir", str(out / "attack"), "--defense-dir", str(out / "defense")]
        before = snapshot(out)
        r = subprocess.run([sys.executable, f"{script}.py", *argv], cwd=ROOT, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        one_line = r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
        ok = r.returncode == 0 or (r.returncode == 2 and one_line and "Traceback" not in r.stderr)
        diverged = "training diverged" in r.stderr  # stops a started run (its last good epoch kept): not a refusal
        if r.returncode == 2 and not diverged and snapshot(out) != before:
            ok, why = False, "a refusal wrote files"
        else:
            why = ""
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or [""])[-1][:160]
        print(f"{'ok  ' if ok else 'FAIL'} {r.returncode:3d} {name}: {why or last}", flush=True)
        if not ok:
            failures.append((name, r.stderr[-1500:]))
    print(f"\n{len(cases) - len(failures)} of {len(cases)} cases behaved")
    for name, err in failures:
        print(f"\n--- {name}\n{err}")


if __name__ == "__main__":
    main()
