"""Run folders: where a run's outputs go, how a rerun is matched to them, and the files inside.

Every run gets a folder of its own, named ``<preset>_seed<seed>_<hash8>``: ``hash8`` is the start of the
SHA-256 of the run's *settings* (built by ``core.jobs.run_settings`` from the declared settings) - the whole
resolved configuration except the ``run`` section (where and how fast it runs), plus a description of the data
actually found, the content hashes of the files the run reads (trigger, defended model) and the versions of
the methods whose code the run executes (``method_version``, see :func:`method_versions`). Runs with other
settings therefore never share a folder; the identical command finds its own folder again and resumes it or
reports it finished, and a method whose results changed (its ``version`` bumped) trains anew in a folder of its
own (:func:`other_versions_note` names the finished runs of the other version, :func:`finished_run_matches`
keeps them out of tables).

``run.json`` in the folder records the settings, their hash, whether the run finished and the version of this
code that last wrote it (:func:`code_version`; every call also logs its own, since a run may be resumed by newer
code: the commit is deliberately not part of the settings - a change that alters a method's results bumps the
method's ``version`` instead). It is the first file written, after every check has passed, and
:func:`check_run_folder` reads it before anything is written, so a refused run changes nothing.

One process at a time works in a run folder: the job holds :func:`run_lock` (an exclusive OS lock on the
hidden ``.lock`` file inside it) from :func:`check_run_folder` to :func:`finish_run`, so two identical commands
started together never train into one folder, and the holder is the only writer of its files.

``<parent>/latest`` points at the run that finished last, whatever its preset (the official layout), and
``<parent>/latest-<preset>`` (``latest-custom`` for a run without a preset) at the last finished run of that
preset, so that a mini run and a paper run do not overwrite each other's pointer. Each is a relative symlink,
or ``<pointer>.txt`` holding the folder name where symlinks are not available.

Inside a folder: resolved config (YAML), metrics (JSON, rewritten atomically) and a readable log.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: run_lock then locks nothing (with a warning)
    fcntl = None

import yaml
from tqdm import tqdm

from . import distributed
from .checkpoint import atomic_write
from .data import EMBEDDED_SAMPLE
from .errors import UserError

RUN_FILE = "run.json"
LATEST = "latest"
LOCK_FILE = ".lock"  # hidden: check_run_folder ignores it, so a folder holding only the lock is a new one
# The key of a run's settings naming the versions of the methods it executes: {method name: version}.
METHOD_VERSION = "method_version"


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def method_versions(*methods) -> dict:
    """The ``method_version`` entry of a run's settings: ``{method name: version}`` of every attack or defense
    (class or instance, with its ``name`` and integer ``version``) whose code the run executes; None entries
    are skipped. attack.py: ``{"BadNets": 1}``; a defense of a BadNets model: ``{"REFINE": 1, "BadNets": 1}``
    (the attack's code builds the poisoned test set the defense is measured on). A method bumps its
    ``version`` whenever a change alters its results: the version is in the settings hash, so a run of the
    other version is another folder, never reported finished nor taken into a table."""
    versions = {}
    for method in methods:
        if method is None:
            continue
        name, version = getattr(method, "name", None), getattr(method, "version", None)
        if not isinstance(name, str) or not name or type(version) is not int or version < 1:
            raise TypeError(f"{method!r} needs a name and an integer version >= 1, got {name!r} and {version!r}")
        versions[name] = version
    return versions


def describe_split(split) -> dict:
    """Which data a run actually found, for its settings: size, full data or the embedded sample, and a
    digest of the labels and of an evenly strided sample of the pixels (about 4 MB, fast even for ImageNet)."""
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


_ABSENT = object()


def _shown(value, limit: int = 40) -> str:
    text = "(absent)" if value is _ABSENT else canonical_json(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def settings_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``"key: old != new"`` for every setting that differs between two settings dicts (nested dicts key by
    key, ``data.train.sha256: ...``), values as JSON (so 1 and 1.0 differ, as in the settings hash)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a is not _ABSENT and b is not _ABSENT and canonical_json(a) == canonical_json(b):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_differences(a, b, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: {_shown(a)} != {_shown(b)}")
    return out


def _changed(old: dict, new: dict, most: int = 4) -> str:
    diffs = settings_differences(old, new)
    if not diffs:
        return "settings"
    more = f" and {len(diffs) - most} more" if len(diffs) > most else ""
    return "; ".join(diffs[:most]) + more


def _versions_text(versions: dict, names) -> str:
    return " and ".join(f"{n} version {versions[n]}" if n in versions else f"{n} without a version" for n in names)


def _differing(old, new) -> list[str]:
    """The methods whose versions differ (every method of ``new`` when ``old`` recorded no versions)."""
    new = new if isinstance(new, dict) else {}
    if not isinstance(old, dict):
        return sorted(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _version_difference(old, new) -> tuple[str | None, str]:
    """(what made the old run, what this code is), naming only the methods whose versions differ:
    ``("BadNets version 1", "version 2")``; the first is None for a run made before versions were recorded."""
    names = _differing(old, new)
    new = new if isinstance(new, dict) else {}
    if not isinstance(old, dict):
        return None, _versions_text(new, names) or "without method versions"
    if len(names) == 1 and names[0] in old and names[0] in new:
        return _versions_text(old, names), f"version {new[names[0]]}"
    return _versions_text(old, names), _versions_text(new, names)


def _made_by(old_text: str | None) -> str:
    return f"of {old_text}" if old_text else "made before method versions were recorded"


def _normalised(settings: dict) -> dict:
    return json.loads(canonical_json(settings))


def _finished_record(folder: Path, product: str | None) -> dict | None:
    """run.json of a finished run in ``folder`` (``product`` saved), else None; a damaged record counts as none."""
    try:
        record = read_run_record(folder)
    except UserError:
        return None
    if not record or not record.get("finished") or product and not (folder / product).is_file():
        return None
    return record if isinstance(record.get("settings"), dict) else None


def other_versions_note(folder, settings: dict, product: str) -> str | None:
    """For a run about to start in the new ``folder``: the finished runs beside it (same parent) whose
    settings equal ``settings`` except for ``method_version`` - made by another version of a method, or
    before versions were recorded - named in one line for the log, e.g. ``<folder> holds a finished run of
    BadNets version 1; this code is version 2, so this run trains anew``; None when there are none.
    ``product``: the file a finished run holds (``model.pth``)."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return None
    settings = _normalised(settings)
    wanted = {k: v for k, v in settings.items() if k != METHOD_VERSION}
    new = settings.get(METHOD_VERSION)
    found = []
    for sibling in sorted(folder.parent.iterdir()):
        if sibling.name == folder.name or sibling.name.startswith(".") or sibling.is_symlink() or not sibling.is_dir():
            continue
        record = _finished_record(sibling, product)
        if record is None:
            continue
        old = record["settings"]
        if old.get(METHOD_VERSION) != new and {k: v for k, v in old.items() if k != METHOD_VERSION} == wanted:
            found.append((sibling, old.get(METHOD_VERSION)))
    if not found:
        return None
    if len(found) == 1:
        old_text, new_text = _version_difference(found[0][1], new)
        return (f"{found[0][0]} holds a finished run {_made_by(old_text)}; this code is {new_text}, so this run "
                f"trains anew")
    names = sorted({name for _, old in found for name in _differing(old, new)})
    runs = "; ".join(f"{sibling} holds a finished run {_made_by(_version_difference(old, new)[0])}"
                     for sibling, old in found)
    return f"{runs}; this code is {_versions_text(new or {}, names)}, so this run trains anew"


def finished_run_matches(folder, settings: dict, product: str | None = None, ignore=()) -> tuple[bool, str]:
    """Whether ``folder`` holds a finished run of exactly ``settings`` (the wanted resolved settings as
    ``core.jobs.run_settings`` builds them, ``method_version`` included), for a table that takes a run's results
    without running it. Compared in full: every key of either side, nested dicts key by key; ``ignore``
    names top-level keys left out of the comparison (e.g. ``data`` where the table is built without loading
    the data); ``product``: a file the finished run must hold. Returns ``(True, "")``, or ``(False, reason)``
    with a one-line reason: the differing keys, the run's value first (``momentum: 0.9 != 0.5``), and/or
    the version difference (``made by BadNets version 1, this code is version 2 (run the cell again to
    recompute)``)."""
    folder = Path(folder)
    try:
        record = read_run_record(folder)
    except UserError as exc:
        return False, str(exc)
    if record is None:
        return False, f"{folder} holds no {RUN_FILE}"
    if not record.get("finished"):
        return False, f"{folder} holds an unfinished run"
    if product and not (folder / product).is_file():
        return False, f"{folder} has no {product}"
    recorded = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    wanted = _normalised(settings)
    recorded = {k: v for k, v in recorded.items() if k not in ignore}
    wanted = {k: v for k, v in wanted.items() if k not in ignore}
    reasons = settings_differences({k: v for k, v in recorded.items() if k != METHOD_VERSION},
                                   {k: v for k, v in wanted.items() if k != METHOD_VERSION})
    if METHOD_VERSION not in ignore and recorded.get(METHOD_VERSION) != wanted.get(METHOD_VERSION):
        old_text, new_text = _version_difference(recorded.get(METHOD_VERSION), wanted.get(METHOD_VERSION))
        made = f"made by {old_text}" if old_text else "made before method versions were recorded"
        reasons.append(f"{made}, this code is {new_text} (run the cell again to recompute)")
    return not reasons, "; ".join(reasons)


def check_run_folder(folder, settings: dict, product: str, fresh: bool = False) -> str:
    """What to do with ``folder`` for a run of ``settings``, decided before anything is written.

    Returns 'new' (nothing there), 'resume' (an unfinished run of the same settings), 'fresh' (an unfinished
    run to be discarded because of --fresh) or 'finished' (the same run, already done: ``product`` exists).
    Raises a UserError - and so writes nothing - for a folder that holds another run or unknown files.
    A finished run is never discarded. Hidden names (the :func:`run_lock` file) do not count as files.
    Call it inside :func:`run_lock`, so that no other process changes the folder between the check and the run.
    A finished run made by another method version (or before versions were recorded) has other settings:
    under its own name it is another folder (see :func:`other_versions_note`), under ``--run-name`` it is refused.
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
        changed = _changed(record["settings"] if isinstance(record.get("settings"), dict) else {}, settings)
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


_held: set[str] = set()  # run folders this process holds the lock of (run_lock is not re-entrant)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # file systems without flock


@contextlib.contextmanager
def run_lock(folder, wait: bool = False, log=None):
    """Holds an exclusive OS lock on the run folder ``folder`` (``fcntl.flock`` on its hidden ``.lock`` file,
    the folder created if needed) for the ``with`` block: the job holds it from :func:`check_run_folder` to
    :func:`finish_run`, so two identical commands never train into one folder and the holder is the only
    writer of its files. Another process holding it: a one-line UserError naming it (pid, start time) - or,
    with ``wait``, a wait until it lets go (``log`` gets a line saying so). The kernel lets go of a killed
    process's lock by itself. On leaving, the ``.lock`` file is removed, and so are the folders this call
    created when they hold nothing else (a run refused inside the lock leaves nothing behind, but for an empty
    folder where another process took the lock over at that moment). Where the OS
    or the file system has no such locks, nothing is locked (with a warning)."""
    folder = Path(folder)
    if not distributed.is_main():  # under torchrun rank 0 holds the lock and alone writes
        yield
        return
    if fcntl is None:
        warnings.warn(f"no file locks on this system: {folder} is not protected against a second process "
                      f"running the same command", RuntimeWarning, stacklevel=3)
        yield
        return
    key = str(folder.absolute())
    if key in _held:
        raise RuntimeError(f"{folder} is already locked by this process (run_lock is not re-entrant)")
    created: list[Path] = []
    fd = _acquire(folder, wait, log, created)
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        _release(folder, fd, created)


def _acquire(folder: Path, wait: bool, log, created: list) -> int | None:
    """The open, locked ``.lock`` file of ``folder`` (None where the file system has no locks)."""
    path = folder / LOCK_FILE
    waited = False
    for _ in range(1000):
        try:
            _make_folders(folder, created)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            continue  # a refused run removed the folder just now: make it again
        except OSError as exc:
            _remove_created(created)
            raise UserError(f"cannot lock the run folder {folder}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "pid unknown"
                if not wait:
                    raise UserError(f"{folder} is in use by another process ({holder}); wait for it to end and run "
                                    f"the command again (it then finds that run finished, or resumes it), or pass "
                                    f"another --out") from None
                if log is not None and not waited:
                    log(f"{folder} is in use by another process ({holder}); waiting for it to end")
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_FLOCK:
                _remove_created(created)
                raise
            warnings.warn(f"the file system of {folder} has no file locks ({exc}): it is not protected against a "
                          f"second process running the same command", RuntimeWarning, stacklevel=4)
            Path(path).unlink(missing_ok=True)
            return None
        except BaseException:
            os.close(fd)
            _remove_created(created)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed this .lock file on leaving: lock the one there now
            os.close(fd)
            continue
        info = f"pid {os.getpid()} on {socket.gethostname()}, started at {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        return fd
    raise UserError(f"cannot lock the run folder {folder}: it keeps disappearing")


def _make_folders(folder: Path, created: list) -> None:
    """Makes ``folder`` and its missing parents, adding those this call made to ``created`` (outermost first)."""
    for path in [*reversed(folder.parents), folder]:
        if not path.is_dir():
            try:
                path.mkdir()
            except FileExistsError:
                continue  # another process made it: not ours to remove
            created.append(path)


def _remove_created(created: list) -> None:
    for path in reversed(created):
        try:
            path.rmdir()  # only when empty
        except OSError:
            pass


def _release(folder: Path, fd: int | None, created: list) -> None:
    if fd is not None:
        try:  # removed while still held: a waiter then finds its file gone and locks the new one
            (folder / LOCK_FILE).unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for children that inherited the descriptor (data loaders)
        finally:
            os.close(fd)
    _remove_created(created)


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


def report_finished(folder: Path, label: str = "", preset: str | None = None) -> dict:
    """A rerun of a finished run: points ``latest`` and ``latest-<preset>`` at it again (``preset``: the run's
    preset, None for a run without one), prints its result (``label`` before the BA/ASR) and returns its
    metrics; nothing is trained or written."""
    folder = Path(folder)
    metrics = read_metrics(folder)
    final = metrics.get("final", {})
    try:
        point_latest(folder.parent, folder.name)
        point_latest(folder.parent, folder.name, latest_pointer(preset))
    except OSError:  # a finished run on a read-only disk is still a finished run
        print(f"note: {folder.parent} is not writable, so its latest pointers were not moved to this run")
    print(f"already finished: {folder} ({label + format_metrics(final) if final else 'see metrics.json'}); nothing "
          f"to train (--fresh discards unfinished runs only; delete the folder to train it again)")
    return metrics


def finish_run(folder: Path, settings: dict, preset: str | None = None) -> None:
    """Marks a run finished (its product is saved) and points ``latest`` and ``latest-<preset>`` at it
    (``preset``: the run's preset, None for a run without one: ``latest-custom``)."""
    folder = Path(folder)
    write_run_record(folder, settings, finished=True)
    point_latest(folder.parent, folder.name)
    point_latest(folder.parent, folder.name, latest_pointer(preset))


def latest_pointer(preset: str | None) -> str:
    """The name of a preset's own pointer: ``latest-<preset>``, ``latest-custom`` for runs without a preset
    (the prefix of their folder names)."""
    return f"{LATEST}-{preset or 'custom'}"


def point_latest(parent, name: str, pointer: str = LATEST) -> None:
    """Points ``parent/<pointer>`` at the run folder ``parent/name``: a relative symlink replaced atomically,
    or ``parent/<pointer>.txt`` holding the name where the file system has no symlinks."""
    if not distributed.is_main():  # under torchrun rank 0 alone writes
        return
    parent = Path(parent)
    tmp = parent / f".{pointer}.{uuid.uuid4().hex}.tmp"
    try:
        os.symlink(name, tmp, target_is_directory=True)
        os.replace(tmp, parent / pointer)
    except OSError:
        if tmp.is_symlink():
            tmp.unlink()
        atomic_text(parent / f"{pointer}.txt", name + "\n")
    else:
        (parent / f"{pointer}.txt").unlink(missing_ok=True)


def read_latest(parent, preset: str | None = None) -> Path | None:
    """The run folder a pointer of ``parent`` names (resolved, absolute), or None when there is no such
    pointer: ``latest`` (the run that finished last, any preset) when ``preset`` is None, else
    ``latest-<preset>`` (pass ``"custom"`` for runs without a preset). A missing per-preset pointer is None,
    not the shared one: the caller decides whether another preset's run will do."""
    parent = Path(parent)
    pointer = LATEST if preset is None else latest_pointer(preset)
    link = parent / pointer
    if link.is_dir():
        return link.resolve()
    text_file = parent / f"{pointer}.txt"
    if text_file.is_file():
        name = text_file.read_text().strip()
        if name and "/" not in name and (parent / name).is_dir():
            return (parent / name).resolve()
    return None


def latest_run(parent, preset: str | None, product: str) -> Path | None:
    """The run a job reads by default below ``parent``: the last finished run of ``preset`` (``latest-<preset>``;
    ``custom`` for None), else of any preset (``latest``); only one that holds ``product``. None when neither."""
    for folder in (read_latest(parent, preset or "custom"), read_latest(parent)):
        if folder is not None and (Path(folder) / product).is_file():
            return folder
    return None


_metrics_locks: dict[str, threading.Lock] = {}
_metrics_locks_guard = threading.Lock()


def _metrics_lock(path: Path) -> threading.Lock:
    with _metrics_locks_guard:
        return _metrics_locks.setdefault(str(Path(path).absolute()), threading.Lock())


class RunLog:
    """The log, config and metrics files of a run folder. It never deletes anything: a resumed run appends.

    ``metrics.json`` is changed by re-reading it, merging and rewriting it atomically under a lock per file
    within this process, so two RunLog objects (or threads) of one process never lose each other's entries.
    Across processes there is a single writer: the job holds :func:`run_lock` on the folder for the whole run.
    Under torchrun that writer is rank 0; the other ranks keep their metrics in memory and write nothing.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.writes = distributed.is_main()
        if self.writes:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / "log.txt"
        self.metrics_path = self.folder / "metrics.json"
        self.metrics = read_metrics(self.folder)

    def log(self, message: str, echo: bool = True) -> None:
        """Prints (without breaking progress bars) and appends a timestamped line to log.txt."""
        if not self.writes:
            return
        if echo:
            tqdm.write(message)
        with open(self.log_path, "a") as fh:
            fh.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")

    def write_config(self, config: dict, name: str = "config.yaml") -> None:
        atomic_text(self.folder / name, yaml.safe_dump(config, sort_keys=False))

    def _change(self, change) -> None:
        """Re-reads metrics.json, applies ``change(metrics)`` and writes it back atomically."""
        with _metrics_lock(self.metrics_path):
            metrics = read_metrics(self.folder) if self.writes else self.metrics
            change(metrics)
            atomic_text(self.metrics_path, json.dumps(metrics, indent=2))
            self.metrics = metrics

    def update_metrics(self, **entries) -> None:
        self._change(lambda metrics: metrics.update(entries))

    def append_metric(self, key: str, entry: dict) -> None:
        """Appends to a list (e.g. one entry per evaluation); an entry for the same epoch is replaced."""
        def change(metrics):
            metrics[key] = [e for e in metrics.get(key, []) if e.get("epoch") != entry.get("epoch")] + [entry]
        self._change(change)

    def discard_metrics(self) -> None:
        """Forgets the metrics of an unfinished run that --fresh discards (the log keeps its history)."""
        with _metrics_lock(self.metrics_path):
            self.metrics = {}
            if self.writes:
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
              header: str = "", written: dict | None = None) -> "RunLog":
    """Opens a run folder that :func:`check_run_folder` accepted, once every check has passed: with
    ``status`` 'fresh' deletes the unfinished run's ``discard`` files and metrics, writes ``run.json`` and
    ``config.yaml`` (``written``: the form to write, e.g. nested by section; default ``config``), then logs ``header``, the recipe the preset picked and the ``notes`` gathered before
    the folder existed (for a 'new' folder, :func:`other_versions_note` among them). Returns the folder's
    :class:`RunLog`."""
    run = RunLog(folder)
    if status == "fresh" and distributed.is_main():
        for name in discard:
            (Path(folder) / name).unlink(missing_ok=True)
        run.discard_metrics()
        run.log("--fresh: the unfinished run in this folder is discarded")
    write_run_record(folder, settings)
    run.write_config(config if written is None else written)
    if header:
        run.log(header)
    run.log(f"code: {code_version()}", echo=False)
    if config.get("recipe_note"):
        run.log(f"recipe: {config['recipe_note']}")
    for note in notes:
        run.log(note)
    return run
