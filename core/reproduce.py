"""One command per table and figure of the paper: ``python reproduce.py ITEM --preset mini|paper``.

An item is a grid of runs - (data set, model) × attacks × defense columns, each column one defense with its
setting overrides - and the paper's table it answers (``core/paper_numbers.yaml``). :func:`reproduce` runs or
resumes exactly those runs through compare.py's job (``table_only``: runs nothing and takes the finished runs of
exactly those settings), then writes Markdown + CSV with the paper's number beside ours and the difference, and
the item's figure where it has one. A new item is one :func:`register` call below.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .errors import UserError
from .settings import flag_of
from .tables import MISSING, NO_DEFENSE, md_table, write_csv

SEVEN_ATTACKS = ("BadNets", "Blended", "WaNet", "Physical", "BATT", "LC", "Adaptive")


@dataclass(frozen=True)
class Column:
    """A defense column. ``defense`` None: a baseline of the paper the toolkit does not implement (its paper
    numbers are shown, ours are not). ``paper``: the keys of its row in the paper's table besides data set, model
    and attack (default: the defense's name and the overrides)."""

    defense: str | None
    overrides: dict = field(default_factory=dict)
    paper: dict | None = None
    label: str | None = None
    paper_name: str | None = None  # the unimplemented baseline's name

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        base = self.defense or self.paper_name or "?"
        return base + "".join(f" {k}={v}" for k, v in self.overrides.items())

    def paper_keys(self) -> dict:
        if self.paper is not None:
            return self.paper
        return {"defense": self.defense or self.paper_name, **self.overrides}


def _paper_only(name: str) -> Column:
    return Column(None, paper_name=name, label=f"{name} (not implemented)")


@dataclass(frozen=True)
class Item:
    """One table or figure of the paper and the runs it needs."""

    name: str
    summary: str
    paper_table: str | None = None  # key in core/paper_numbers.yaml
    attacks: tuple = ()
    columns: tuple = ()
    grids: tuple = (("CIFAR10", "ResNet18"),)
    optional_grids: tuple = ()  # run only where their data is found (ImageNet-50)
    figure: Callable | None = None  # (item, results by grid, sources by grid, opts, stem) -> [paths]
    measures: tuple = ("BA", "ASR")  # keys of MEASURES: the table's numbers
    given: str = ""  # a reproduce.py option the item needs (its value goes into the columns' overrides)
    attack_keys: dict = field(default_factory=dict)  # attack -> more keys of its rows in the paper's table
    preset_columns: dict = field(default_factory=dict)  # preset -> the columns run there instead of ``columns``

    def for_preset(self, preset: str) -> "Item":
        """The item as run at ``preset``: its columns for that preset where it declares them."""
        return replace(self, columns=self.preset_columns.get(preset, self.columns))


ITEMS: dict[str, Item] = {}


def register(item: Item) -> Item:
    if item.name in ITEMS:
        raise ValueError(f"item {item.name!r} registered twice")
    ITEMS[item.name] = item
    return item


# -- the results and their table ----------------------------------------------------------------------------

def _final(key: str):
    return lambda metrics: ((metrics or {}).get("final") or {}).get(key)


def _train_minutes(metrics):
    seconds = (metrics or {}).get("train_wall_seconds_this_call")
    return None if seconds is None else round(seconds / 60, 2)


def _inference_seconds(metrics):
    speed = (metrics or {}).get("inference") or {}
    timing = speed.get("defended") or speed.get("model")  # a defense run's T∘F∘M, or an attack run's model
    return None if not timing else timing.get("seconds_per_10000")


# what a table can show: (how to read ours from a run's metrics.json, the paper's key in core/paper_numbers.yaml)
MEASURES = {
    "BA": (_final("BA"), "BA"),
    "ASR": (_final("ASR"), "ASR"),
    "train minutes": (_train_minutes, "overhead_minutes"),  # one call's wall time: a resumed run shows its last
    "inference s / 10k images": (_inference_seconds, None),
}


def _paper_row(item: Item, dataset: str, model: str, attack: str, keys: dict) -> dict:
    if not item.paper_table:
        return {}
    keys = {**keys, **item.attack_keys.get(attack, {})}
    from .paper import lookup  # noqa: PLC0415 - the YAML is read only when a table is built
    try:
        return lookup(item.paper_table, dataset=dataset, model=model, attack=attack, **keys)
    except LookupError:
        try:  # a table that names no attack (the paper's Tables 4 and 12)
            return lookup(item.paper_table, dataset=dataset, model=model, **keys)
        except LookupError:
            return {}


def _difference(ours, paper):
    return None if ours is None or paper is None else round(ours - paper, 2)


def table_rows(item: Item, results_by_grid: dict, sources_by_grid: dict) -> list[dict]:
    """One row per (data set, model, attack, column): for each of the item's measures ours, the paper's and the
    difference. ``results_by_grid``: {(dataset, model): [(attack, column label or None, metrics)]} as compare's
    job returns them."""
    rows = []
    for (dataset, model), results in results_by_grid.items():
        found = {(a, d): m for a, d, m in results}
        sources = sources_by_grid.get((dataset, model), {})
        for attack in item.attacks:
            cells = [(NO_DEFENSE, None, {"defense": "none"})] + [(c.name, c, c.paper_keys()) for c in item.columns]
            for label, column, keys in cells:
                implemented = column is None or column.defense is not None
                metrics = found.get((attack, None if column is None else label)) if implemented else None
                paper = _paper_row(item, dataset, model, attack, keys)
                source = sources.get((attack, label))
                row = {"dataset": dataset, "model": model, "attack": attack, "defense": label}
                for measure in item.measures:
                    read, paper_key = MEASURES[measure]
                    ours, theirs = read(metrics), paper.get(paper_key) if paper_key else None
                    row.update({measure: ours, f"{measure} paper": theirs, f"{measure} diff": _difference(ours, theirs)})
                rows.append({**row, "implemented": implemented, "metrics": str(source) if source else ""})
    return rows


def _shown(value, implemented: bool = True) -> str:
    if not implemented:
        return "n/i"
    return MISSING if value is None else f"{value:.2f}"


def markdown(item: Item, rows: list[dict], preset: str, left_out: tuple | list = (), configs: dict | None = None) -> str:
    """The item's Markdown table; ``left_out``: the item's attacks that --attacks left out (named above it);
    ``configs``: the YAML files read over the preset ({"--defense-config": path, ...}), named above it too."""
    lines = [f"### {item.name}: {item.summary} (preset {preset})", ""]
    if item.paper_table:
        from .paper import describe  # noqa: PLC0415
        about = describe(item.paper_table)
        lines.append(f"Paper: Table {item.paper_table.removeprefix('table')} (Section {about.get('section', '?')}), "
                     f"{about.get('caption', '')}." + (f" Its numbers are missing: {about['missing']}."
                                                       if about.get("missing") else ""))
    if preset != "paper":
        lines.append(f"Ours are at the `{preset}` preset's scale, the paper's at its own: compare the pattern, "
                     f"not the digits.")
    if configs:
        lines.append("Read over the preset: " + ", ".join(f"`{flag} {path}`" for flag, path in configs.items()) + ".")
    if left_out:
        lines.append(f"Rows left out by --attacks: {', '.join(left_out)}.")
    lines += [f"{', '.join(item.measures)}; BA / ASR in %, Δ = ours − paper; n/i: a baseline this toolkit does not "
              f"implement; {MISSING}: no finished run (or no paper number).", ""]
    header, body = ["data / model", "attack", "defense"], []
    for measure in item.measures:
        header += [measure, "paper", "Δ"]
    for r in rows:
        cells = [f"{r['dataset']} / {r['model']}", r["attack"], r["defense"]]
        for measure in item.measures:
            cells += [_shown(r[measure], r["implemented"]), _shown(r[f"{measure} paper"]),
                      _shown(r[f"{measure} diff"], r["implemented"])]
        body.append(cells)
    lines += md_table(header, body, ["---"] * 3 + ["---:"] * (3 * len(item.measures)))
    return "\n".join(lines) + "\n"


# -- running an item ----------------------------------------------------------------------------------------

def _data_found(dataset: str, data_root) -> bool:
    from .data import DataNotFound, find_source  # noqa: PLC0415
    try:
        find_source(dataset, data_root)
    except DataNotFound:
        return False
    return True


def grids_to_run(item: Item, opts, log=print) -> list[tuple[str, str]]:
    grids = list(item.grids)
    for dataset, model in item.optional_grids:
        if _data_found(dataset, getattr(opts, "data_root", None) or "data"):
            grids.append((dataset, model))
        else:
            log(f"{item.name}: no {dataset} data found under --data-root; its {model} part is left out")
    return grids


def chosen_attacks(item: Item, attacks) -> Item:
    """The item restricted to ``attacks`` (a subset of its own, in its order; None or empty: all of them), so that
    a user runs only the rows they can afford. Left-out rows are absent from the table, never filled from
    elsewhere."""
    if not attacks:
        return item
    unknown = [a for a in attacks if a not in item.attacks]
    if unknown:
        raise UserError(f"--attacks: {', '.join(unknown)} not among {item.name}'s attacks "
                        f"({', '.join(item.attacks) or 'none'}); name some of those")
    return replace(item, attacks=tuple(a for a in item.attacks if a in attacks))


def reproduce(item_name: str, opts: argparse.Namespace, log=print) -> tuple[list[Path], list[str]]:
    """Runs (or, with ``opts.table_only``, only collects) the item's runs and writes its table and figure.
    ``opts``: compare.py's options (preset, device, seed, data_root, attack_dir, defense_dir, test_size, ...),
    ``attacks`` (a subset of the item's attacks, or None) and ``out_table`` (the stem of the written files).
    Returns (written paths, failed cells)."""
    from .compare import compare, table_only_results  # noqa: PLC0415 - torch is loaded only to run
    preset = getattr(opts, "preset", None) or "paper"
    full = item_named(item_name).for_preset(preset)
    item = chosen_attacks(full, getattr(opts, "attacks", None))
    stem = Path(getattr(opts, "out_table", None) or f"results/reproduce/{item.name}_{preset}")
    run = table_only_results if getattr(opts, "table_only", False) else compare
    results_by_grid, sources_by_grid, failed = {}, {}, []
    extra = {}
    if item.given:
        value = getattr(opts, item.given, None)
        if not value:
            raise UserError(f"{item.name} needs {flag_of(item.given)} (see `python reproduce.py --list`)")
        extra = {item.given: value}
    implemented = [(c.name, c.defense, {**c.overrides, **extra}) for c in item.columns if c.defense is not None]
    for dataset, model in (grids_to_run(item, opts, log) if item.attacks else []):
        grid_opts = argparse.Namespace(**{**vars(opts), "dataset": dataset, "model": model,
                                          "attacks": list(item.attacks), "columns": implemented})
        log(f"== {item.name}: {dataset} / {model}, {len(item.attacks)} attack(s) × {len(implemented)} defense(s)")
        results, sources, grid_failed = run(grid_opts, log=log)
        results_by_grid[(dataset, model)], sources_by_grid[(dataset, model)] = results, sources
        failed += [f"{dataset}/{model}/{cell}" for cell in grid_failed]
    written = []
    if item.columns or item.attacks:
        rows = table_rows(item, results_by_grid, sources_by_grid)
        configs = {flag_of(key): getattr(opts, key) for key in ("attack_config", "defense_config")
                   if getattr(opts, key, None)}
        text = markdown(item, rows, preset, [a for a in full.attacks if a not in item.attacks], configs)
        stem.parent.mkdir(parents=True, exist_ok=True)
        md = stem.with_suffix(".md")
        from .checkpoint import atomic_write  # noqa: PLC0415
        atomic_write(md, lambda fh: fh.write(text.encode()))
        write_csv(rows, stem.with_suffix(".csv"))
        log(text)
        written += [md, stem.with_suffix(".csv")]
    from .distributed import is_main  # noqa: PLC0415
    if item.figure is not None and is_main():  # under torchrun: rank 0 draws
        written += item.figure(item, results_by_grid, sources_by_grid, opts, stem)
    return written, failed


def item_named(name: str) -> Item:
    key = str(name).lower().replace(" ", "")
    if key not in ITEMS:
        raise UserError(f"unknown item {name!r}; `python reproduce.py --list` shows the items ({', '.join(ITEMS)})")
    return ITEMS[key]


def listing() -> str:
    """Every item and what it runs."""
    lines = []
    for item in ITEMS.values():
        grids = ", ".join(f"{d}/{m}" for d, m in item.grids + item.optional_grids)
        columns = ", ".join(c.name for c in item.columns)
        runs = (f"{len(item.attacks)} attack(s) [{', '.join(item.attacks)}] × [{columns}] on {grids}"
                if item.attacks else "no training runs")
        runs += f"; needs {flag_of(item.given)}" if item.given else ""
        for preset, preset_columns in item.preset_columns.items():
            runs += f"\n{'':9s} at --preset {preset}: [{', '.join(c.name for c in preset_columns)}]"
        lines.append(f"{item.name:9s} {item.summary}\n{'':9s} runs: {runs}")
    return "\n".join(lines)


# -- figures ------------------------------------------------------------------------------------------------

def _folder(sources: dict, attack: str, label: str) -> Path | None:
    path = sources.get((attack, label))
    return Path(path).parent if path else None


def _triggers(item, results_by_grid, sources_by_grid, opts, stem) -> list[Path]:
    from .data import load_split  # noqa: PLC0415
    from .plot import one_per_class, triggers_figure  # noqa: PLC0415
    dataset = "CIFAR10"
    test = load_split(dataset, "test", getattr(opts, "data_root", None) or "data", allow_embedded=True)
    picks = one_per_class(test, 5)
    titles = [str(test.classes[int(test.labels[i])]) for i in picks]
    return [triggers_figure(test.images[picks], stem.with_suffix(".png"), None, getattr(opts, "seed", 0) or 0,
                            titles, dataset)]


def _refine_figure(kind: str):
    def draw(item, results_by_grid, sources_by_grid, opts, stem) -> list[Path]:
        from .plot import load_defense_run, transformed_figure, tsne_figure  # noqa: PLC0415
        written = []
        for sources in sources_by_grid.values():
            for attack in item.attacks:
                folder = _folder(sources, attack, "REFINE")
                if folder is None:
                    continue
                run = load_defense_run(folder, getattr(opts, "data_root", None) or "data")
                out = Path(f"{stem}_{attack}.png")
                if kind == "transformed":
                    written.append(transformed_figure(run.model, run.attack, run.test, out, 10, 0,
                                                      f"REFINE's T on benign and {attack}-poisoned images"))
                else:
                    written.append(tsne_figure(run.model, run.attack, run.test, out, 500, 0, run.defense))
        return written
    return draw


def _shrinkpad_and_tsne(item, results_by_grid, sources_by_grid, opts, stem) -> list[Path]:
    from .plot import shrinkpad_figure  # noqa: PLC0415
    written = []
    for sources in sources_by_grid.values():
        folders = [_folder(sources, a, c.name) for a in item.attacks for c in item.columns if c.defense == "ShrinkPad"]
        folders = [f for f in folders if f is not None]
        if folders:
            written.append(shrinkpad_figure(folders, Path(f"{stem}_shrinkpad.png")))
    return written + _refine_figure("tsne")(item, results_by_grid, sources_by_grid, opts, Path(f"{stem}_tsne"))


# -- the paper's tables and figures -------------------------------------------------------------------------

register(Item("table1", "REFINE against input-transformation defenses, seven attacks", "table1", SEVEN_ATTACKS,
              (Column("ShrinkPad"), _paper_only("BDMAE"), _paper_only("ZIP"), Column("REFINE")),
              optional_grids=(("ImageNet50", "ResNet18"),)))
register(Item("table2", "REFINE against trigger-inversion defenses, seven attacks", "table2", SEVEN_ATTACKS,
              (Column("NC"), _paper_only("UNICORN"), Column("BTI-DBF-P"), Column("REFINE")),
              optional_grids=(("ImageNet50", "ResNet18"),)))
register(Item("table3", "ablation: REFINE without its label remapping or its contrastive loss", "table3",
              SEVEN_ATTACKS,
              (Column("REFINE", {"remap": False}, {"defense": "REFINE", "remap": False, "lam": 0.1},
                      "REFINE w/o HRF (remap=False)"),
               Column("REFINE", {"lam": 0.0}, {"defense": "REFINE", "remap": True, "lam": 0.0},
                      "REFINE w/o SCL (lam=0)"),
               Column("REFINE", {}, {"defense": "REFINE", "remap": True, "lam": 0.1}))))
# the paper does not name Table 4's attack; its CIFAR-10 "normal attack" (91.74 / 100) is Table 8's BadNets model
register(Item("table4", "the adaptive attacker who fine-tunes through a simulated REFINE (BadNets)", "table4",
              ("BadNets", "BadNets-adaptive"), (Column("REFINE"),),
              optional_grids=(("ImageNet50", "ResNet18"),),
              attack_keys={"BadNets": {"attacker_knows_refine": False},
                           "BadNets-adaptive": {"attacker_knows_refine": True}}))
register(Item("table5", "REFINE and BTI-DBF(P) on VGG-16, DenseNet-121 and ViT", "table5", SEVEN_ATTACKS,
              (_paper_only("BDMAE"), Column("BTI-DBF-P"), Column("REFINE")),
              grids=(("CIFAR10", "VGG16"), ("CIFAR10", "DenseNet121"), ("CIFAR10", "ViT"))))
register(Item("table6", "REFINE with 100 % down to 20 % of the training set as its unlabeled data", "table6",
              ("BadNets",), tuple(Column("REFINE", {"data_fraction": f}) for f in (1.0, 0.8, 0.6, 0.4, 0.2))))
register(Item("table7", "REFINE with the contrastive loss's weight λ from 1.0 to 0.2", "table7", ("BadNets",),
              tuple(Column("REFINE", {"lam": v}) for v in (1.0, 0.8, 0.6, 0.4, 0.2))))
# The mini preset's UNet has 16 first-layer channels where the paper's has 64, so at that scale Table 8 runs the
# same ratios (1/2, 3/4, 1 and 5/4 of the preset's width: 8 to 20 channels; the paper's 32 to 80 would cost a
# 2-core run many times the mini recipe) beside the paper's row of the same ratio.
register(Item("table8", "REFINE with 32 to 80 channels in the UNet's first layer", "table8", ("BadNets",),
              tuple(Column("REFINE", {"unet_channels": c}) for c in (32, 48, 64, 80)),
              preset_columns={"mini": tuple(
                  Column("REFINE", {"unet_channels": c}, {"defense": "REFINE", "unet_channels": 4 * c},
                         f"REFINE unet_channels={c} (the paper's {4 * c})") for c in (8, 12, 16, 20))}))
register(Item("table9", "REFINE trained on another distribution's images (CINIC-10: --defense-data-root TREE)",
              "table9", ("BadNets",),
              (Column("REFINE", paper={"defense": "REFINE", "defender_data": "CINIC10"},
                      label="REFINE on --defense-data-root"),), given="defense_data_root"))
register(Item("table10", "REFINE against traditional model reprogramming (T-MR)", "table10",
              ("BadNets", "WaNet", "Adaptive"), (Column("T-MR"), Column("REFINE"))))
register(Item("table11", "black-box REFINE: a ResNet-18 surrogate distilled from a ResNet-50's probabilities "
              "(the surrogate's own BA/ASR: each run's metrics.json, `report`)", "table11", SEVEN_ATTACKS,
              (Column("REFINE-BB", paper={"defense": "REFINE", "role": "black-box"}),),
              grids=(("CIFAR10", "ResNet50"),)))
register(Item("table12", "overhead: the time each defense takes to train, and its inference time", "table12",
              ("BadNets",), (Column("BTI-DBF-P"), Column("REFINE", paper={"defense": "REFINE", "unet_channels": 32})),
              measures=("train minutes", "inference s / 10k images")))
register(Item("table13", "fine-tuning alone and followed by REFINE", "table13", ("BadNets",),
              (Column("FT"), Column("FT+REFINE"))))
register(Item("table14", "REFINE with 10 % of the training set as its unlabeled data", "table14",
              ("BadNets", "Blended", "WaNet", "Physical"), (Column("REFINE", {"data_fraction": 0.1}),)))
register(Item("figure2", "ShrinkPad's BA/ASR against its pad size, and t-SNE before/after REFINE (Fig. 2 a)",
              None, ("BadNets",),
              tuple(Column("ShrinkPad", {"pad_size": p}) for p in (0, 2, 4, 6, 8)) + (Column("REFINE"),),
              figure=_shrinkpad_and_tsne))
register(Item("figure5", "every attack's trigger on the same test images", figure=_triggers))
register(Item("figure6", "REFINE's transformed benign and poisoned images per class (Figs. 6-8)", None,
              ("BadNets", "Blended", "WaNet"), (Column("REFINE"),), figure=_refine_figure("transformed")))
register(Item("figure9", "t-SNE of features before and after REFINE (Figs. 9-10)", None, ("BadNets",),
              (Column("REFINE"),), figure=_refine_figure("tsne")))
