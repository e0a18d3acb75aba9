"""Figures of finished runs as PNG files, drawn by matplotlib's Agg canvas (no display needed).

One command each:

    python -m core.plot curves RUN...        # BA and ASR (%) per evaluation epoch, one line per run
    python -m core.plot triggers             # every registered attack's test trigger on the same images (Fig. 5)
    python -m core.plot transformed RUN      # per class: x, T(x), poisoned x, T(poisoned x) (Figs. 6-8)
    python -m core.plot tsne RUN             # t-SNE of penultimate features before / after the defense (Figs. 2, 9, 10)
    python -m core.plot shrinkpad RUN...     # BA and ASR against ShrinkPad's pad size (Fig. 2 a-1)

``RUN``: a run folder (or its ``latest`` pointer). ``curves`` and ``shrinkpad`` read only ``metrics.json`` and
``config.yaml`` (the copies under results/ do); ``transformed`` and ``tsne`` load the run's
``defended_model.pth`` (weights-only, through :func:`core.defenses.load_deployed`) and test images from
``--data-root`` (the embedded CIFAR-10 sample when none is found there, as the mini preset does). Every figure
is written atomically; bad input is one line and exit status 2. From Python: :func:`curves_figure`,
:func:`triggers_figure`, :func:`transformed_figure`, :func:`tsne_figure`, :func:`shrinkpad_figure`, each
returning the path it wrote.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn as nn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .attacks import ATTACKS, Attack, build_attack, restore_attack
from .checkpoint import atomic_write
from .cli import check_writable, main_guard, new_parser
from .data import Split, dataset_info, load_split, seeded_subset, to_float
from .defenses import DeployedModel, load_deployed
from .errors import UserError
from .summary import find_runs, read_config
from .train import frozen

DPI = 100
# Figure sizes in inches, multiples of 1/4 so that inches × DPI is a whole number of pixels exactly (the Agg
# canvas truncates: 8.1 in would come out 809 or 810 px depending on rounding).
PANELS_SIZE = (11.0, 4.5)  # curves and shrinkpad: two panels side by side -> 1100×450 px
TSNE_SIZE = (12.0, 5.5)  # -> 1200×550 px
GRID_LABEL_WIDTH = 1.5  # image grids: the column of row labels on the left ...
GRID_TITLE_HEIGHT = 0.75  # ... the title on top ...
TRIGGER_CELL = 1.25  # ... and one square cell per image (triggers)
TRANSFORMED_CELL = 1.0  # (transformed: up to 10 classes side by side)


# -- reading runs ---------------------------------------------------------------------------------------------

def _run_folder(folder) -> Path:
    """``folder`` as an existing directory (a ``latest`` pointer resolved), or a UserError."""
    path = Path(folder)
    if not path.exists():
        raise UserError(f"run folder {folder} does not exist")
    if not path.is_dir():
        raise UserError(f"{folder} is not a folder; pass a run folder (attack/..., refine_res/..., defense_res/...)")
    return path.resolve()


def read_metrics(folder) -> dict:
    """A run folder's ``metrics.json`` as a dict; a UserError when it is missing or unreadable."""
    path = _run_folder(folder) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{folder} holds no metrics.json; pass a run folder (attack/..., refine_res/..., "
                        f"defense_res/...)")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc})") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{path} is not a run's metrics.json (it holds no JSON object)")
    return metrics


def run_label(folder) -> str:
    """``attack / defense / folder name`` of a run, read from its metrics.json and config.yaml (an attack run's
    defense is "no defense")."""
    folder = _run_folder(folder)
    metrics, config = read_metrics(folder), read_config(folder)
    attack = (metrics.get("attack") or {}).get("attack") or config.get("attack") or "?"
    # older REFINE runs record no ``defense`` in their config; every defense run has a ``no_defense`` entry
    defense = config.get("defense") or ("REFINE" if metrics.get("no_defense") else "no defense")
    return f"{attack} / {defense} / {folder.name}"


def _percent_axes(axes, ylabel: str) -> None:
    axes.set_ylim(-2, 102)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def _new_figure(size) -> Figure:
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)  # rendered by Agg whatever matplotlib's default backend is: no display needed
    return figure


def _write(figure: Figure, out) -> Path:
    """Writes ``figure`` as a PNG of exactly its size × DPI pixels (no tight bounding box), atomically."""
    atomic_write(out, lambda fh: figure.savefig(fh, format="png", dpi=DPI))
    return Path(out)


def _finish_panels(figure: Figure, panels, xlabel: str, title_suffix: str, suptitle: str, out) -> Path:
    """Labels the BA and ASR panels of ``figure`` (percent axes, integer ticks, legends) and writes it."""
    for axes, key, name in zip(panels, ("BA", "ASR"), ("benign accuracy", "attack success rate")):
        _percent_axes(axes, f"{key} (%)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel(xlabel)
        axes.set_title(f"{name} ({key}){title_suffix}")
        axes.legend(fontsize=7, loc="best")
    figure.suptitle(suptitle)
    figure.tight_layout()
    return _write(figure, out)


# -- curves ---------------------------------------------------------------------------------------------------

def curves_figure(runs, out, labels=None) -> Path:
    """BA and ASR (%) of each run at each evaluation epoch (``metrics.json``'s ``evaluations``), two panels, one
    line per run (``labels``: their legend texts; default :func:`run_label`); a defense run's model before the
    defense (``no_defense``) is a dashed line of its colour.
    ``runs``: run folders (unfinished ones too, as far as they got). Writes ``out`` (PNG, 1100×450 px)."""
    if not runs:
        raise UserError("curves needs at least one run folder")
    if labels is not None and len(labels) != len(runs):
        raise UserError(f"--labels gives {len(labels)} label(s) for {len(runs)} run(s); give one per run")
    series = []
    for index, folder in enumerate(runs):
        metrics = read_metrics(folder)
        evaluations = metrics.get("evaluations") or []
        if not evaluations:
            raise UserError(f"{folder} has no evaluations in its metrics.json (nothing was evaluated yet: a run "
                            f"evaluates every --eval-every epochs)")
        series.append((labels[index] if labels else run_label(folder), metrics.get("no_defense"), evaluations))
    figure = _new_figure(PANELS_SIZE)
    panels = figure.subplots(1, 2, sharex=True)
    for index, (label, before, evaluations) in enumerate(series):
        colour = f"C{index % 10}"
        epochs = [e["epoch"] for e in evaluations]
        for axes, key in zip(panels, ("BA", "ASR")):
            axes.plot(epochs, [e.get(key) for e in evaluations], marker="o", markersize=3, color=colour, label=label)
            if before and before.get(key) is not None:
                axes.axhline(before[key], color=colour, linestyle="--", linewidth=1,
                             label=f"{label}: no defense")
    return _finish_panels(figure, panels, "epoch", " per evaluation",
                          "BA and ASR during training (dashed: the model before the defense)", out)


# -- shrinkpad ------------------------------------------------------------------------------------------------

def shrinkpad_points(roots) -> dict[str, list[tuple[int, dict, dict | None]]]:
    """The finished ShrinkPad runs below ``roots`` (run folders or folders that hold runs), per defended model
    (labelled ``attack / model run folder``): ``[(pad_size, final metrics, no_defense metrics), ...]`` sorted by
    pad size. A UserError when none is found or one pad size has two runs of the same model."""
    for root in roots:
        _run_folder(root)
    groups: dict[str, dict[int, tuple[Path, dict, dict | None]]] = {}
    for folder in find_runs(roots):
        config = read_config(folder)
        if config.get("defense") != "ShrinkPad":
            continue
        if config.get("pad_size") is None:
            raise UserError(f"{folder}/config.yaml records no pad_size; is it a ShrinkPad run of this toolkit?")
        metrics = read_metrics(folder)
        attack = (metrics.get("attack") or {}).get("attack") or config.get("attack") or "?"
        model_run = Path(config["model_path"]).parent.name if config.get("model_path") else "?"
        runs = groups.setdefault(f"{attack} / {model_run}", {})
        pad = int(config["pad_size"])
        if pad in runs:
            raise UserError(f"two ShrinkPad runs with pad size {pad} of the same model: {runs[pad][0]} and {folder}; "
                            f"pass the run folders to plot instead of the folder above them")
        runs[pad] = (folder, metrics["final"], metrics.get("no_defense"))
    if not groups:
        raise UserError(f"no finished ShrinkPad run below {', '.join(map(str, roots))} (defend.py --defense ShrinkPad "
                        f"--pad-size N makes one; compare.py --sweep pad_size=0,2,4,8 makes a sweep)")
    return {label: [(pad, final, before) for pad, (_, final, before) in sorted(runs.items())]
            for label, runs in groups.items()}


def shrinkpad_figure(roots, out) -> Path:
    """BA and ASR (%) against ShrinkPad's pad size (the paper's Fig. 2 a-1), two panels, one line per defended
    model; its BA/ASR without defense dashed. ``roots``: ShrinkPad run folders or folders that hold them (other
    defenses' runs are skipped). Writes ``out`` (PNG, 1100×450 px)."""
    groups = shrinkpad_points(roots)
    figure = _new_figure(PANELS_SIZE)
    panels = figure.subplots(1, 2, sharex=True)
    for index, (label, points) in enumerate(groups.items()):
        colour = f"C{index % 10}"
        pads = [pad for pad, _, _ in points]
        before = next((b for _, _, b in points if b), None)
        for axes, key in zip(panels, ("BA", "ASR")):
            axes.plot(pads, [final.get(key) for _, final, _ in points], marker="o", color=colour, label=label)
            if before and before.get(key) is not None:
                axes.axhline(before[key], color=colour, linestyle="--", linewidth=1, label=f"{label}: no defense")
    return _finish_panels(figure, panels, "pad size S (pixels)", "",
                          "ShrinkPad: BA and ASR against the pad size (dashed: no defense)", out)


# -- image grids ----------------------------------------------------------------------------------------------

def one_per_class(split: Split, count: int) -> torch.Tensor:
    """Indices (int64, ``count`` of them) of the first image of classes 0, 1, 2, ... (wrapping round to the
    second image of each class when ``count`` exceeds the number of classes); classes without images are
    skipped."""
    per_class = [(split.labels == c).nonzero().flatten() for c in range(len(split.classes))]
    picks = []
    for rank in range(max((len(p) for p in per_class), default=0)):
        picks += [int(p[rank]) for p in per_class if rank < len(p)]
        if len(picks) >= count:
            break
    return torch.tensor(picks[:count], dtype=torch.int64)


def _image_grid(rows: list[tuple[str, torch.Tensor]], column_titles: list[str], cell: float, title: str, out) -> Path:
    """A grid of images, one row per ``(label, float images N×C×H×W in [0, 1])``, N = len(column_titles).
    Size: (GRID_LABEL_WIDTH + N·cell) × (GRID_TITLE_HEIGHT + rows·cell) inches at :data:`DPI`."""
    size = (GRID_LABEL_WIDTH + cell * len(column_titles), GRID_TITLE_HEIGHT + cell * len(rows))
    figure = _new_figure(size)
    axes = figure.subplots(len(rows), len(column_titles), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(len(column_titles)):
            ax = axes[r][c]
            image = images[c].detach().float().clamp(0, 1).cpu()
            ax.imshow(image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy(),
                      cmap=None if image.shape[0] == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    figure.suptitle(title, fontsize=10)
    # fixed margins in inches (not tight_layout, which would squeeze long row labels into the cells)
    figure.subplots_adjust(left=GRID_LABEL_WIDTH / size[0], right=0.99, bottom=0.02,
                           top=1 - GRID_TITLE_HEIGHT / size[1], wspace=0.05, hspace=0.12)
    return _write(figure, out)


def _row_label(cls: type[Attack]) -> str:
    if not cls.poisons_data:
        return f"{cls.name}\n(no trigger)"
    if cls.reference_attack:  # LC: the training images also get PGD against a trained model, the test ones do not
        return f"{cls.name}\n(test trigger;\ntraining adds PGD)"
    return cls.name


def triggers_figure(images: torch.Tensor, out, attacks=None, seed: int = 0, column_titles=None,
                    dataset: str = "") -> Path:
    """Every registered attack's test trigger (:meth:`Attack.poison_uint8`, rounded as an image file) on the same
    ``images`` (uint8 N×C×H×W, square), one row per attack (the paper's Fig. 5). ``attacks``: registry names or
    aliases (None: all, Benign's row being the clean images); each is built with its default settings and
    ``seed`` (Blended's noise, WaNet's warp, Adaptive's patches). None needs a trained model for its test
    trigger: LC's training-time PGD is not shown. Writes ``out`` (PNG, (150 + 125·N) × (75 + 125·attacks) px)."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2] or images.dtype != torch.uint8:
        raise UserError(f"triggers needs uint8 square images N×C×H×W, got {images.dtype} {tuple(images.shape)}")
    classes = [ATTACKS.get(name) for name in attacks] if attacks else list(ATTACKS.values())
    rows = []
    for cls in classes:
        attack = build_attack(cls.name, image_size=images.shape[-1], seed=seed)
        rows.append((_row_label(cls), to_float(attack.poison_uint8(images))))
    titles = list(column_titles) if column_titles is not None else [f"image {i}" for i in range(len(images))]
    where = f" ({dataset} test images)" if dataset else ""
    return _image_grid(rows, titles, TRIGGER_CELL, f"Test-time triggers of the attacks{where}", out)


@dataclass
class DefenseRun:
    """What ``transformed`` and ``tsne`` need of a finished defense run."""

    folder: Path
    model: DeployedModel  # eval mode, CPU
    attack: Attack  # as trained: its trigger from the tensors saved with the model
    defense: str
    test: Split  # the data set's test split


def load_defense_run(folder, data_root="data") -> DefenseRun:
    """A defense run folder's deployed model (``defended_model.pth``, weights-only), the attack whose model it
    defends and the test split (from ``data_root``; the embedded CIFAR-10 sample when there is none)."""
    folder = _run_folder(folder)
    path = folder / "defended_model.pth"
    if not path.is_file():
        raise UserError(f"{folder} holds no defended_model.pth; pass the folder of a finished defense run "
                        f"(the copies under results/ keep no weights)")
    model, meta = load_deployed(path)
    attack_config = meta.get("attack")
    if not attack_config or attack_config.get("attack") == "Benign":
        raise UserError(f"{path} defends a model without a known trigger (no attack recorded); nothing poisoned to "
                        f"show")
    dataset = meta.get("dataset", "CIFAR10")
    _, image_size = dataset_info(dataset)
    attack = restore_attack(attack_config, meta.get("trigger"), image_size=image_size)
    test = load_split(dataset, "test", data_root, allow_embedded=True)
    return DefenseRun(folder, model, attack, str(meta.get("defense", "defense")), test)


def _transform(model: DeployedModel, images: torch.Tensor, seed: int, batch_size: int = 256) -> torch.Tensor:
    """The deployed input transform T of float images N×C×H×W in [0, 1] -> same shape and range. Seeded, for
    random transforms (ShrinkPad's offsets)."""
    torch.manual_seed(seed)
    with frozen(model), torch.inference_mode():
        return torch.cat([model.transform(images[s:s + batch_size]) for s in range(0, len(images), batch_size)])


def transformed_figure(model: DeployedModel, attack: Attack, test: Split, out, count: int = 10, seed: int = 0,
                       title: str = "") -> Path:
    """Per class (the first test image of the first ``count`` classes, one column each): the benign image x,
    T(x), its poisoned version (``attack``'s test trigger) and T(poisoned x), T being ``model``'s input transform
    (REFINE's UNet; the paper's Figs. 6-8). Writes ``out`` (PNG, (150 + 100·columns) × 475 px)."""
    picks = one_per_class(test, count)
    if not len(picks):
        raise UserError("the test split holds no images")
    benign = to_float(test.images[picks])
    poisoned = to_float(attack.poison_uint8(test.images[picks]))
    rows = [("benign x", benign), ("T(x)", _transform(model, benign, seed)),
            ("poisoned x", poisoned), ("T(poisoned x)", _transform(model, poisoned, seed))]
    titles = [str(test.classes[int(test.labels[i])]) for i in picks]
    title = title or f"Input transform T on benign and {attack.name}-poisoned test images"
    return _image_grid(rows, titles, TRANSFORMED_CELL, title, out)


# -- t-SNE ----------------------------------------------------------------------------------------------------

def penultimate_features(classifier: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The features a classifier's last linear layer reads (its penultimate layer: the pooled backbone output of
    a ResNet, VGG or DenseNet, the class token of a ViT), for float images N×C×H×W in [0, 1] -> float N×D on the
    CPU (D = 8·width for a ResNet-18). Found by hooking the input of the last ``nn.Linear`` called, so it
    holds for every model of core.models without knowing its head."""
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(classifier).__name__} has no linear layer whose input could serve as features")
    calls: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _, inputs: calls.append(inputs[0])) for m in linears]
    features = []
    try:
        with frozen(classifier), torch.inference_mode():
            for s in range(0, len(images), batch_size):
                calls.clear()
                classifier(images[s:s + batch_size])
                features.append(calls[-1].flatten(1).float().cpu())  # the head is the last linear layer run
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(features)


def tsne_embedding(features: torch.Tensor, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA start, ``random_state=seed``) of float N×D features -> float N×2."""
    from sklearn.manifold import TSNE  # only this figure needs scikit-learn (and it imports slowly)

    n = len(features)
    perplexity = min(30.0, max(2.0, (n - 1) / 3))  # scikit-learn requires perplexity < n
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features.numpy())


def tsne_samples(attack: Attack, test: Split, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``count`` benign test images and ``count`` poisoned ones (non-target test images with the test
    trigger), each balanced per class when ``count`` is at least the number of classes, drawn from ``seed``:
    (benign float N×C×H×W, their labels int64 N, poisoned float M×C×H×W), in [0, 1]."""
    def balanced(labels):  # fewer images than classes: a plain seeded draw (a balanced one would give none)
        return labels if count >= len(labels.unique()) else None

    benign = seeded_subset(len(test), count, seed, balanced(test.labels))
    non_target = (test.labels != attack.y_target).nonzero().flatten()
    if not len(non_target):
        raise UserError(f"every test image is of the target class {attack.y_target}: nothing to poison")
    poisoned = non_target[seeded_subset(len(non_target), count, seed, balanced(test.labels[non_target]))]
    return (to_float(test.images[benign]), test.labels[benign],
            to_float(attack.poison_uint8(test.images[poisoned])))


def tsne_figure(model: DeployedModel, attack: Attack, test: Split, out, count: int = 500, seed: int = 0,
                defense: str = "REFINE") -> Path:
    """t-SNE of the penultimate features of ``count`` benign and ``count`` poisoned test images (see
    :func:`tsne_samples`), two panels: before the defense (the classifier F on x) and after it (F on T(x), T the
    deployed input transform); benign points coloured by class, poisoned ones black (the paper's Figs. 2, 9,
    10). Each panel is its own t-SNE of its 2·count points. Writes ``out`` (PNG, 1200×550 px)."""
    if count < 5:
        raise UserError(f"--count {count}: t-SNE needs at least 5 benign and 5 poisoned images")
    benign, labels, poisoned = tsne_samples(attack, test, count, seed)
    images = torch.cat([benign, poisoned])
    panels = [("before: F(x)", penultimate_features(model.classifier, images)),
              (f"after {defense}: F(T(x))", penultimate_features(model.classifier, _transform(model, images, seed)))]
    figure = _new_figure(TSNE_SIZE)
    axes_pair = figure.subplots(1, 2)
    cmap = matplotlib.colormaps["tab10" if len(test.classes) <= 10 else "tab20"]  # wraps round beyond 20 classes
    for axes, (name, features) in zip(axes_pair, panels):
        points = tsne_embedding(features, seed)
        clean, triggered = points[:len(benign)], points[len(benign):]
        for c in labels.unique().tolist():
            chosen = (labels == c).numpy()
            axes.scatter(clean[chosen, 0], clean[chosen, 1], s=6, color=cmap(c % cmap.N),
                         label=str(test.classes[c]))
        axes.scatter(triggered[:, 0], triggered[:, 1], s=6, color="black", marker="x", linewidths=0.6,
                     label=f"poisoned (target {test.classes[attack.y_target]})")
        axes.set_title(name)
        axes.set_xlabel("t-SNE 1")
        axes.set_ylabel("t-SNE 2")
        axes.legend(fontsize=6, markerscale=2, loc="best")
    figure.suptitle(f"t-SNE of penultimate features: {len(benign)} benign and {len(poisoned)} {attack.name}-poisoned "
                    f"test images")
    figure.tight_layout()
    return _write(figure, out)


# -- the command line -----------------------------------------------------------------------------------------

def _add_out(parser, default: str) -> None:
    parser.add_argument("--out", default=None, help=f"PNG file to write (default: {default})")


def _out_path(args, default: Path) -> Path:
    out = Path(args.out) if args.out else default
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the figure is a PNG; give a file name ending in .png")
    check_writable(out, "--out")
    return out


def parse_args(argv=None):
    p = new_parser(__doc__.splitlines()[0])
    p.prog = "python -m core.plot"  # before the subcommands, whose names start with it (in --help and refusals)
    commands = p.add_subparsers(dest="figure", required=True, metavar="FIGURE",
                                help="curves, triggers, transformed, tsne or shrinkpad (FIGURE --help: its flags)")

    c = commands.add_parser("curves", help="BA and ASR per evaluation epoch of one or more runs")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders (attack/..., refine_res/..., defense_res/...)")
    c.add_argument("--labels", nargs="+", metavar="LABEL", help="one legend label per run, in order (default: attack / "
                                                                "defense / run folder)")
    _add_out(c, "curves.png in the current folder")

    t = commands.add_parser("triggers", help="every attack's test trigger on the same test images (Fig. 5)")
    t.add_argument("--dataset", default="CIFAR10", help="data set of the test images (default CIFAR10)")
    t.add_argument("--data-root", default="data", help="where the data set is (default data/; the embedded "
                                                       "CIFAR-10 sample when none is found)")
    t.add_argument("--count", type=int, default=5, help="test images, one per class (default 5)")
    t.add_argument("--attacks", nargs="+", metavar="ATTACK", help="only these attacks (default: every registered one)")
    t.add_argument("--seed", type=int, default=0, help="the attacks' seed (Blended's noise, WaNet's warp; default 0)")
    _add_out(t, "triggers.png in the current folder")

    for name, help_text in (("transformed", "per class x, T(x), poisoned x, T(poisoned x) of a defense run"),
                            ("tsne", "t-SNE of penultimate features before and after a defense")):
        s = commands.add_parser(name, help=help_text)
        s.add_argument("run", metavar="RUN", help="a finished defense run folder (holding defended_model.pth)")
        s.add_argument("--data-root", default="data", help="where the run's data set is (default data/; the "
                                                           "embedded CIFAR-10 sample when none is found)")
        if name == "transformed":
            s.add_argument("--count", type=int, default=10, help="classes shown, one column each (default 10)")
        else:
            s.add_argument("--count", type=int, default=500,
                           help="benign and poisoned test images each (default 500: sized for a CPU)")
        s.add_argument("--seed", type=int, default=0, help="image choice, t-SNE and random transforms (default 0)")
        _add_out(s, f"{name}.png in the run folder")

    sp = commands.add_parser("shrinkpad", help="BA and ASR against ShrinkPad's pad size (Fig. 2 a-1)")
    sp.add_argument("runs", nargs="+", metavar="RUN", help="ShrinkPad run folders, or folders that hold them")
    _add_out(sp, "shrinkpad.png in the current folder")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    smallest = 5 if args.figure == "tsne" else 1  # t-SNE of fewer points says nothing (checked before any loading)
    if getattr(args, "count", smallest) < smallest:
        raise UserError(f"--count must be at least {smallest} for {args.figure}, got {args.count}")
    if args.figure == "curves":
        for run in args.runs:
            read_metrics(run)  # a missing run is refused before anything else
        out = curves_figure(args.runs, _out_path(args, Path("curves.png")), getattr(args, "labels", None))
    elif args.figure == "shrinkpad":
        out = shrinkpad_figure(args.runs, _out_path(args, Path("shrinkpad.png")))
    elif args.figure == "triggers":
        if args.attacks:
            for name in args.attacks:
                ATTACKS.get(name)  # an unknown name: one line listing the known ones
        out_path = _out_path(args, Path("triggers.png"))
        test = load_split(args.dataset, "test", args.data_root, allow_embedded=True)
        picks = one_per_class(test, args.count)
        print(f"test images: {test.source}")
        out = triggers_figure(test.images[picks], out_path, args.attacks, args.seed,
                              [str(test.classes[int(test.labels[i])]) for i in picks], args.dataset)
    else:
        folder = _run_folder(args.run)
        out_path = _out_path(args, folder / f"{args.figure}.png")
        run = load_defense_run(folder, args.data_root)
        print(f"test images: {run.test.source}")
        if args.figure == "transformed":
            title = f"{run.defense}'s input transform T on benign and {run.attack.name}-poisoned images ({folder.name})"
            out = transformed_figure(run.model, run.attack, run.test, out_path, args.count, args.seed, title)
        else:
            out = tsne_figure(run.model, run.attack, run.test, out_path, args.count, args.seed, run.defense)
    print(f"wrote {out}")


if __name__ == "__main__":
    main_guard(main)
