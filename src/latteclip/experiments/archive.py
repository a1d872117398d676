"""Finished runs kept as small JSON files that a checkout can hold, so a new clone reuses them without their run folders.

A benchmark's run folders (checkpoints, logs) stay out of version control; what its tables read of a
run (results.json and the run's summary) is kept in the archive under the run's name, with the
configuration that made it. An entry is used only for exactly that configuration, where the weights
files a run starts from count by their content (a cache folder elsewhere holds the same weights under
another path), and only with the same pre-trained source and describer weights (`bind`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from latteclip.config import NOT_COMPARED, RunConfig, fields_of_kind
from latteclip.paths import atomic_write_bytes

WHERE_WRITTEN = fields_of_kind("files")  # the archive is read from other checkouts, whose run folders are elsewhere


def comparable(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration as saved in a run folder, without the resume and overwrite flags (which differ between calls)."""
    return json.loads(json.dumps({k: v for k, v in data.items() if k not in NOT_COMPARED}))


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RunArchive:
    """One JSON file per run name under `folder`: {"key": ..., "results": ..., "summary": ..., "commit": the checkout that
    recorded it}. Results depend on the code only through the key, so after a change to a method's code its entries are
    rerun on purpose (the benchmark's --rerun)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.weights: dict[str, str] = {}
        self._digests: dict[str, str] = {}

    def bind(self, weights: dict[str, Path]) -> list[str]:
        """The experiment's pre-trained weights files, which every entry's key then holds by content.

        Returns a warning per archived set of other weights (pre-trained elsewhere, e.g. with another thread
        count): their entries are not reused.
        """
        self.weights = {name: self._digest(path) for name, path in sorted(weights.items())}
        others: dict[str, int] = {}
        for path in sorted(self.folder.rglob("*.json")) if self.folder.is_dir() else []:
            bound = json.loads(path.read_text()).get("key", {}).get("experiment_weights")
            if bound != self.weights:
                name = json.dumps(bound, sort_keys=True)
                others[name] = others.get(name, 0) + 1
        return [f"{count} archived runs in {self.folder} were made from other pre-trained weights ({bound}; these are "
                f"{json.dumps(self.weights, sort_keys=True)}): they are not reused" for bound, count in others.items()]

    def _digest(self, path: str | Path) -> str:
        key = str(path)
        if key not in self._digests:
            self._digests[key] = file_digest(path)
        return self._digests[key]

    def key(self, config: RunConfig) -> dict[str, Any]:
        """What decides a run's results: its configuration, with files by content and without where it is written."""
        data = {k: v for k, v in comparable(config.to_dict()).items() if k not in WHERE_WRITTEN}
        if data.get("pretrained") and Path(data["pretrained"]).is_file():
            data["pretrained"] = "sha256:" + self._digest(data["pretrained"])
        options = dict(data.get("method_options") or {})
        if options.get("class_descriptions") and Path(options["class_descriptions"]).is_file():
            options["class_descriptions"] = "sha256:" + self._digest(options["class_descriptions"])
        data["method_options"] = options
        data["experiment_weights"] = self.weights
        return data

    def path(self, config: RunConfig) -> Path:
        return self.folder / f"{config.name or config.run_dir.name}.json"

    def get(self, config: RunConfig) -> dict[str, Any] | None:
        """The archived results and summary of exactly this configuration, or None."""
        path = self.path(config)
        if not path.is_file():
            return None
        entry = json.loads(path.read_text())
        return entry if entry.get("key") == json.loads(json.dumps(self.key(config))) else None

    def put(self, config: RunConfig, results: dict[str, Any], summary: dict[str, Any]) -> None:
        """Record a finished run (replacing the entry of an earlier configuration under the same name)."""
        entry = {"key": self.key(config), "commit": _commit(), "results": results, "summary": summary}
        atomic_write_bytes(self.path(config), (json.dumps(entry, indent=1, sort_keys=True) + "\n").encode())


@functools.cache
def _commit() -> str | None:
    """The code's git commit, for the record (None outside a checkout)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None
