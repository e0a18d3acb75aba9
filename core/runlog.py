"""Run folders: where a run's outputs go, how a rerun is matched to them, and the files inside.

Every run gets a folder of its own, named ``<preset>_seed<seed>_<hash8>``: ``hash8`` is the start of the
SHA-256 of the run's *settings* - the whole resolved configuration except pure input/output and logging
options (:data:`IO_KEYS`), plus a description of the data actually found and the content hashes of the
files the run reads (trigger, defended model). Runs with other settings therefore never share a folder;
the identical command finds its own folder again and resumes it or reports it finished.

``run.json`` in the folder records the settings, their hash, whether the run finished and the version of this
code that last wrote it (:func:`code_version`; every call also logs its own, since a run may be resumed by newer
code: the version is deliberately not part of the settings). It is the
first file written, after every check has passed, and :func:`check_run_folder` reads it before anything
is written, so a refused run changes nothing. ``<parent>/latest`` (a relative symlink, or ``latest.txt``
holding the folder name where symlinks are not available) points at the run that finished last.

Inside a folder: resolved config (YAML), metrics (JSON, rewritten atomically) and a readable log.
"""
from __future__ import annotations

import hashlib
import functools
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import yaml
from tqdm import tqdm

from .checkpoint import atomic_write, file_sha256
from .errors import UserError

# Options that only say where things are read from or written to, how progress is reported, or how fast the
# same computation runs (compile, fused): they never change what a run computes, so they are left out of its
# settings hash, and a run resumes with them changed. Every other option is in.
IO_KEYS = frozenset({"out", "device", "eval_every", "eval_batch_size", "fresh", "data_root", "allow_embedded",
                     "download", "preset", "recipe_note", "run_name", "attack_dir", "compile", "fused",
                     "defense"})  # a defense's runs have a folder of their own: its name needs no place in the hash
# Options that name an input file: the settings hold the file's content hash, not its path, so that a
# moved file is the same run and another file under the same name is not.
FILE_KEYS = frozenset({"trigger", "model_path", "benign_model"})
RUN_FILE = "run.json"
LATEST = "latest"


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def run_settings(config: dict, **extra) -> dict:
    """The settings that define a run: every option of ``config`` but :data:`IO_KEYS` (input files of
    :data:`FILE_KEYS` by the SHA-256 of their bytes), plus ``extra`` (e.g. a description of the data
    found), JSON-normalised (tuples become lists)."""
    settings = {k: v for k, v in config.items() if k not in IO_KEYS}
    for key in FILE_KEYS & set(settings):
        if settings[key] is not None:
            settings[key] = {"sha256": file_sha256(settings[key])}
    settings.update(extra)
    return json.loads(canonical_json(settings))


def describe_split(split) -> dict:
    """Which data a run actually found, for its settings: size, full data or the embedded sample, and a
    digest of the labels and of an evenly strided sample of the pixels (about 4 MB, fast even for ImageNet)."""
    from .data import EMBEDDED_SAMPLE

    images = split.images.reshape(-1)
    stride = max(1, images.numel() // (1 << 22))
    digest = hashlib.sha256(split.labels.numpy().tobytes())
    digest.update(images[::stride].contiguous().numpy().tobytes())
    return {"images": len(split), "kind": "embedded sample" if str(EMBEDDED_SAMPLE) in split.source else "full",
            "sha256": digest.hexdigest()[:16]}


def tensors_sha256(tensors: dict) -> str:
    """SHA-256 of named tensors (names, shapes, dtypes and bytes): identifies a trigger whatever built it."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def run_name(config: dict, settings: dict) -> str:
    return f"{config.get('preset') or 'custom'}_seed{config['seed']}_{settings_hash(settings)[:8]}"


def read_run_record(folder: Path) -> dict | None:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or "fingerprint" not in record:
            raise ValueError("no fingerprint")
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} is truncated or corrupt ({exc}); move the folder away or pass another "
                        f"--out") from exc
    return record


def _changed(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) if keys else "settings"


def check_run_folder(folder, settings: dict, product: str, fresh: bool = False) -> str:
    """What to do with ``folder`` for a run of ``settings``, decided before anything is written.

    Returns 'new' (nothing there), 'resume' (an unfinished run of the same settings), 'fresh' (an unfinished
    run to be discarded because of --fresh) or 'finished' (the same run, already done: ``product`` exists).
    Raises a UserError - and so writes nothing - for a folder that holds another run or unknown files.
    A finished run is never discarded.
    """
    folder = Path(folder)
    if not folder.is_dir() or not any(not p.name.startswith(".") for p in folder.iterdir()):
        return "new"
    record = read_run_record(folder)
    if record is None:
        raise UserError(f"{folder} already holds files but no {RUN_FILE} (not a run of this version of the toolkit); "
                        f"they are kept: pass another --out or --run-name, or move them away")
    finished = bool(record.get("finished")) and (folder / product).is_file()
    if record["fingerprint"] != settings_hash(settings):
        changed = _changed(record.get("settings", {}), settings)
        if finished:
            raise UserError(f"{folder} holds a finished run with other settings ({changed}); it is kept: pass "
                            f"another --out or --run-name")
        if not fresh:
            raise UserError(f"{folder} holds an unfinished run with other settings ({changed}); use the same "
                            f"settings to resume, --fresh to discard it, or another --out or --run-name")
        return "fresh"
    if finished:
        return "finished"
    if fresh:
        return "fresh"
    metrics = folder / "metrics.json"
    if metrics.is_file() and not read_metrics(folder):
        raise UserError(f"{metrics} is truncated or corrupt; delete it (its evaluations are lost) or pass --fresh "
                        f"to start this run over")
    return "resume"


def read_metrics(folder) -> dict:
    """metrics.json of a run folder ({} when missing or unreadable: it is a report, never an input)."""
    try:
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """This checkout's commit (short hash), with ``+changes`` when tracked files differ from it; ``unknown``
    outside a git checkout or without git. Asked of git once per process: the code a run executes is the code
    the process loaded, so the start and the end of a run record the same version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode != 0 or not commit.stdout.strip():
        return "unknown"
    return commit.stdout.strip() + ("+changes" if changes.returncode == 0 and changes.stdout.strip() else "")


def write_run_record(folder, settings: dict, finished: bool = False) -> None:
    record = {"fingerprint": settings_hash(settings), "finished": finished, "settings": settings,
              "code": code_version()}
    atomic_text(Path(folder) / RUN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def report_finished(folder: Path, label: str = "") -> dict:
    """A rerun of a finished run: points ``latest`` at it again, prints its result (``label`` before the
    BA/ASR) and returns its metrics; nothing is trained or written."""
    metrics = read_metrics(folder)
    final = metrics.get("final", {})
    point_latest(folder.parent, folder.name)
    print(f"already finished: {folder} ({label + format_metrics(final) if final else 'see metrics.json'}); nothing "
          f"to train (--fresh discards unfinished runs only; delete the folder to train it again)")
    return metrics


def finish_run(folder: Path, settings: dict) -> None:
    """Marks a run finished (its product is saved) and points ``latest`` at it."""
    write_run_record(folder, settings, finished=True)
    point_latest(folder.parent, folder.name)


def point_latest(parent, name: str) -> None:
    """Points ``parent/latest`` at the run folder ``parent/name``: a relative symlink replaced atomically,
    or ``parent/latest.txt`` holding the name where the file system has no symlinks."""
    parent = Path(parent)
    tmp = parent / f".{LATEST}.{uuid.uuid4().hex}.tmp"
    try:
        os.symlink(name, tmp, target_is_directory=True)
        os.replace(tmp, parent / LATEST)
    except OSError:
        if tmp.is_symlink():
            tmp.unlink()
        atomic_text(parent / f"{LATEST}.txt", name + "\n")
    else:
        (parent / f"{LATEST}.txt").unlink(missing_ok=True)


def read_latest(parent) -> Path | None:
    """The run folder ``parent/latest`` points at (resolved, absolute), or None when there is no pointer."""
    parent = Path(parent)
    link = parent / LATEST
    if link.is_dir():
        return link.resolve()
    text_file = parent / f"{LATEST}.txt"
    if text_file.is_file():
        name = text_file.read_text().strip()
        if name and "/" not in name and (parent / name).is_dir():
            return (parent / name).resolve()
    return None


class RunLog:
    """The log, config and metrics files of a run folder. It never deletes anything: a resumed run appends."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / "log.txt"
        self.metrics_path = self.folder / "metrics.json"
        self.metrics = json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else {}

    def log(self, message: str, echo: bool = True) -> None:
        """Prints (without breaking progress bars) and appends a timestamped line to log.txt."""
        if echo:
            tqdm.write(message)
        with open(self.log_path, "a") as fh:
            fh.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")

    def write_config(self, config: dict, name: str = "config.yaml") -> None:
        atomic_text(self.folder / name, yaml.safe_dump(config, sort_keys=False))

    def update_metrics(self, **entries) -> None:
        self.metrics.update(entries)
        atomic_text(self.metrics_path, json.dumps(self.metrics, indent=2))

    def append_metric(self, key: str, entry: dict) -> None:
        """Appends to a list (e.g. one entry per evaluation); an entry for the same epoch is replaced."""
        series = [e for e in self.metrics.get(key, []) if e.get("epoch") != entry.get("epoch")]
        self.update_metrics(**{key: series + [entry]})

    def discard_metrics(self) -> None:
        """Forgets the metrics of an unfinished run that --fresh discards (the log keeps its history)."""
        self.metrics = {}
        self.metrics_path.unlink(missing_ok=True)


def atomic_text(path, text: str) -> None:
    """Writes a text file atomically (unique temporary file, fsync, rename)."""
    atomic_write(path, lambda fh: fh.write(text.encode()))


def format_metrics(m: dict) -> str:
    parts = [f"BA {m['BA']:.2f}% ({m['BA_correct']}/{m['BA_total']})"]
    if "ASR" in m:
        parts.append(f"ASR {m['ASR']:.2f}% ({m['ASR_hits']}/{m['ASR_total']})")
    return "  ".join(parts)


def start_run(folder: Path, status: str, settings: dict, config: dict, notes: list[str], discard=(),
              header: str = "") -> "RunLog":
    """Opens a run folder that :func:`check_run_folder` accepted, once every check has passed: with
    ``status`` 'fresh' deletes the unfinished run's ``discard`` files and metrics, writes ``run.json`` and
    ``config.yaml``, then logs ``header``, the recipe the preset picked and the ``notes`` gathered before
    the folder existed. Returns the folder's :class:`RunLog`."""
    run = RunLog(folder)
    if status == "fresh":
        for name in discard:
            (Path(folder) / name).unlink(missing_ok=True)
        run.discard_metrics()
        run.log("--fresh: the unfinished run in this folder is discarded")
    write_run_record(folder, settings)
    run.write_config(config)
    if header:
        run.log(header)
    run.log(f"code: {code_version()}", echo=False)
    if config.get("recipe_note"):
        run.log(f"recipe: {config['recipe_note']}")
    for note in notes:
        run.log(note)
    return run
