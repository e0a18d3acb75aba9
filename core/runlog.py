"""A run folder: resolved config (YAML), metrics (JSON, rewritten atomically) and a readable log."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml
from tqdm import tqdm


class RunLog:
    def __init__(self, folder, resume: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / "log.txt"
        self.metrics_path = self.folder / "metrics.json"
        if not resume:
            self.log_path.unlink(missing_ok=True)
            self.metrics_path.unlink(missing_ok=True)
        self.metrics = json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else {}

    def log(self, message: str) -> None:
        """Prints (without breaking progress bars) and appends a timestamped line to log.txt."""
        tqdm.write(message)
        with open(self.log_path, "a") as fh:
            fh.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")

    def write_config(self, config: dict, name: str = "config.yaml") -> None:
        _atomic_text(self.folder / name, yaml.safe_dump(config, sort_keys=False))

    def update_metrics(self, **entries) -> None:
        self.metrics.update(entries)
        _atomic_text(self.metrics_path, json.dumps(self.metrics, indent=2))

    def append_metric(self, key: str, entry: dict) -> None:
        """Appends to a list (e.g. one entry per evaluation); an entry for the same epoch is replaced."""
        series = [e for e in self.metrics.get(key, []) if e.get("epoch") != entry.get("epoch")]
        self.update_metrics(**{key: series + [entry]})


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def format_metrics(m: dict) -> str:
    parts = [f"BA {m['BA']:.2f}% ({m['BA_correct']}/{m['BA_total']})"]
    if "ASR" in m:
        parts.append(f"ASR {m['ASR']:.2f}% ({m['ASR_hits']}/{m['ASR_total']})")
    return "  ".join(parts)
