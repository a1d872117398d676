"""Finished runs kept as small JSON files that a checkout can hold, so a new clone reuses them without their run
folders.

A benchmark's run folders (checkpoints, logs) stay out of version control; what its tables read of a
run (results.json and the run's summary) is kept in the archive under the run's name, with the
configuration that made it. An entry is used only for exactly that configuration, where the weights
files a run starts from count by what they are (a cache folder elsewhere holds the same weights under
another path), and only with the same pre-trained source and describer weights (`bind`). Pre-trained weights count
by their recipe and what they compute, so that another processor or thread count, whose weights differ from these
in the last bits, reuses the archive (docs/domain_shift.md says why that is safe).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from latteclip.config import NOT_COMPARED, RunConfig, fields_of_kind
from latteclip.engine.pretraining import recorded_behaviour
from latteclip.methods import resolved_options
from latteclip.paths import atomic_write_bytes

WHERE_WRITTEN = fields_of_kind("files")  # the archive is read from other checkouts, whose run folders are elsewhere
REFERENCES = "weights"  # the archive's folder of records of the pre-trained weights its entries were made from
# How far two records of what weights compute may be apart and still be the same weights up to rounding: the share of
# probe images whose zero-shot class differs, and the mean difference of their top cosine scores
# (docs/domain_shift.md: measured between processors, vector widths and thread counts, and against a changed recipe).
PREDICTIONS_MAY_DIFFER = 0.02
SCORES_MAY_DIFFER = 0.005
# Run options added after entries were archived, each with the value that computes what the code computed before the
# option existed, and method options renamed since: an older entry's key then reads as the configuration that made it.
ADDED_FIELDS: dict[str, Any] = {"lr_schedule": "cosine", "epoch_length": "authors", "authors_steps_per_epoch": None}
ADDED_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "latteclip": {"mixer_prototypes": "current"},
    "reclip": {"vision_loss_over_batch": False, "lp_templates": "run"},
}
RENAMED_METHOD_OPTIONS = {"describer_model": "described_by"}


def comparable(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration as saved in a run folder, without the resume and overwrite flags (which differ between calls)."""
    return json.loads(json.dumps({k: v for k, v in data.items() if k not in NOT_COMPARED}))


def same_behaviour(reference: dict[str, Any], other: dict[str, Any]) -> tuple[bool, str]:
    """Whether two `behaviour` records (engine/pretraining.py) agree up to rounding, and how far apart they are."""
    if reference["probe"] != other["probe"] or len(reference["predictions"]) != len(other["predictions"]):
        return False, "other probe images"
    count = len(reference["predictions"])
    differ = sum(a != b for a, b in zip(reference["predictions"], other["predictions"])) / count
    scores = sum(abs(a - b) for a, b in zip(reference["scores"], other["scores"])) / count
    distance = f"{100 * differ:.1f}% of {count} probe predictions differ, mean top-score difference {scores:.4f}"
    return differ <= PREDICTIONS_MAY_DIFFER and scores <= SCORES_MAY_DIFFER, distance


def upgraded_key(key: dict[str, Any]) -> dict[str, Any]:
    """An archived key in today's terms: options added since take their earlier behaviour, renamed ones their name,
    and method options not written (entries from before keys held every method option) their defaults."""
    given = {RENAMED_METHOD_OPTIONS.get(k, k): v for k, v in (key.get("method_options") or {}).items()}
    method = key.get("method", "")
    options = {**resolved_options(method, {}), **ADDED_METHOD_OPTIONS.get(method, {}), **given}
    return json.loads(json.dumps({**ADDED_FIELDS, **key, "method_options": options}))


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RunArchive:
    """One JSON file per run name under `folder`: {"key": ..., "results": ..., "summary": ..., "commit": the checkout
    that recorded it}. Results depend on the code only through the key, so after a change to a method's code its entries
    are rerun on purpose (the benchmark's --rerun).

    Pre-trained weights are bound by what they compute, not by their bytes: `weights/` holds a reference record per
    set of weights the entries were made from (the pre-training recipe and `behaviour`, see engine/pretraining.py),
    and weights pre-trained here bind to a reference of the same recipe whose behaviour agrees up to rounding
    (`same_behaviour`). Weights without such a record (a file from elsewhere) are bound by their SHA-256.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.weights: dict[str, str] = {}  # experiment weights name -> identity
        self._bound: dict[Path, str] = {}  # weights file -> identity
        self._new_references: dict[str, dict[str, Any]] = {}  # identities first seen here, written with the first entry
        self._digests: dict[str, str] = {}

    def bind(self, weights: dict[str, Path]) -> list[str]:
        """The experiment's pre-trained weights, which every entry's key then holds by identity.

        Returns a warning per archived set of other weights (another recipe, weights that compute something else,
        or entries bound to weights' bytes before the archive compared behaviour): their entries are not reused.
        """
        notes = []
        for name, path in sorted(weights.items()):
            identity, note = self._identity(path)
            self._bound[Path(path).resolve()] = self.weights[name] = identity
            notes += [note] if note else []
        notes += self._rebind_bytes({name: self._digest(path) for name, path in weights.items()})
        others: dict[str, int] = {}
        for path in self._entry_files():
            bound = json.loads(path.read_text()).get("key", {}).get("experiment_weights")
            if bound != self.weights:
                name = json.dumps(bound, sort_keys=True)
                others[name] = others.get(name, 0) + 1
        for bound, count in others.items():
            old = all(re.fullmatch(r"[0-9a-f]{64}", value) for value in json.loads(bound).values())
            why = (
                (
                    " (bound to those weights files' bytes, before the archive compared what weights compute: kept "
                    "readable, reused by no checkout; regenerating the benchmark replaces them)"
                )
                if old
                else ""
            )
            notes.append(
                f"{count} archived runs in {self.folder} were made from other pre-trained weights ({bound}; "
                f"these are {json.dumps(self.weights, sort_keys=True)}){why}: they are not reused"
            )
        return notes

    def _rebind_bytes(self, digests: dict[str, str]) -> list[str]:
        """Entries bound to these very weights files' bytes (before the archive compared behaviour) are the same
        weights for certain: they are rewritten bound to the weights' identities, their keys in today's terms."""
        rebound = 0
        for path in self._entry_files():
            entry = json.loads(path.read_text())
            if entry.get("key", {}).get("experiment_weights") != digests or digests == self.weights:
                continue
            key = {**upgraded_key(entry["key"]), "experiment_weights": self.weights}
            by_bytes = {f"sha256:{digest}": self.weights[name] for name, digest in digests.items()}
            key["pretrained"] = by_bytes.get(key.get("pretrained"), key.get("pretrained"))
            entry["key"] = key
            atomic_write_bytes(path, (json.dumps(entry, indent=1, sort_keys=True) + "\n").encode())
            rebound += 1
        if not rebound:
            return []
        self._write_references()
        return [
            f"{rebound} archived runs in {self.folder} were bound to the bytes of these weights files; they are "
            "now bound to what the weights compute (weights/), so that other machines reuse them"
        ]

    def _write_references(self) -> None:
        """Record what the bound weights compute, for identities the archive holds no record of yet."""
        for identity in self.weights.values():
            if identity in self._new_references:
                reference = {**self._new_references.pop(identity), "commit": _commit()}
                reference_path = self.folder / REFERENCES / f"{identity}.json"
                atomic_write_bytes(reference_path, (json.dumps(reference) + "\n").encode())

    def _entry_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [path for path in sorted(self.folder.rglob("*.json")) if path.parent != self.folder / REFERENCES]

    def _identity(self, weights: Path) -> tuple[str, str | None]:
        """The identity of a weights file (its reference's, when one agrees) and a note when a reference disagrees."""
        record = recorded_behaviour(weights)
        if record is None:
            return "sha256:" + self._digest(weights), None
        note = None
        for path in sorted((self.folder / REFERENCES).glob(f"{record['recipe']}-*.json")):
            reference = json.loads(path.read_text())
            same, distance = same_behaviour(reference["behaviour"], record["behaviour"])
            if same:
                return path.stem, None
            note = (
                f"the weights {weights} (recipe {record['recipe']}) compute other answers than the archive's "
                f"{path.name} ({distance}): more than rounding, so a code change; the runs made from those are "
                "not reused"
            )
        identity = f"{record['recipe']}-{hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]}"
        self._new_references[identity] = record
        return identity, note

    def _digest(self, path: str | Path) -> str:
        key = str(path)
        if key not in self._digests:
            self._digests[key] = file_digest(path)
        return self._digests[key]

    def key(self, config: RunConfig) -> dict[str, Any]:
        """What decides a run's results: its configuration, with files by content and without where it is written."""
        data = {k: v for k, v in comparable(config.to_dict()).items() if k not in WHERE_WRITTEN}
        if data.get("pretrained") and Path(data["pretrained"]).is_file():
            bound = self._bound.get(Path(data["pretrained"]).resolve())
            data["pretrained"] = bound or "sha256:" + self._digest(data["pretrained"])
        # every method option, defaults included: a default that changes changes the key, and its entries are rerun
        options = resolved_options(config.method, dict(data.get("method_options") or {}))
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
        return entry if upgraded_key(entry.get("key", {})) == json.loads(json.dumps(self.key(config))) else None

    def put(self, config: RunConfig, results: dict[str, Any], summary: dict[str, Any]) -> None:
        """Record a finished run (replacing the entry of an earlier configuration under the same name)."""
        entry = {"key": self.key(config), "commit": _commit(), "results": results, "summary": summary}
        atomic_write_bytes(self.path(config), (json.dumps(entry, indent=1, sort_keys=True) + "\n").encode())
        self._write_references()  # the first entry made from these weights records what they compute


@functools.cache
def _commit() -> str | None:
    """The code's git commit, for the record (None outside a checkout)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None
