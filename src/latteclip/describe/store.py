"""The description store: SQLite, keyed by image content hash, kind, prompt, backend and model.

Every answer is committed as it arrives, so a killed `describe` loses nothing and a rerun asks
only for what is missing. Training reads texts back by image hash, so a description made for
an image is found again whatever path or archive the image is read from.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from latteclip.paths import cache_dir

KINDS = ("image", "group", "class")

SCHEMA = """
CREATE TABLE IF NOT EXISTS descriptions (
    image_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    prompt TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    image TEXT,
    dataset TEXT,
    meta TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (image_hash, kind, prompt, backend, model)
);
CREATE INDEX IF NOT EXISTS by_hash_kind ON descriptions (image_hash, kind);
"""


def image_key(data: bytes) -> str:
    """The content hash that keys an image's descriptions."""
    return hashlib.sha1(data).hexdigest()


def default_store_path() -> Path:
    return cache_dir() / "descriptions.sqlite"


class DescriptionStore:
    """Thread-safe access to one SQLite file (one connection, serialised by a lock)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(
        self,
        image_hash: str,
        kind: str,
        prompt: str,
        backend: str,
        model: str,
        text: str,
        image: str | None = None,
        dataset: str | None = None,
        meta: dict | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO descriptions VALUES (?,?,?,?,?,?,?,?,?,?)",
                (image_hash, kind, prompt, backend, model, text, image, dataset, json.dumps(meta) if meta else None, time.time()),
            )
            self._db.commit()

    def has(self, image_hash: str, kind: str, prompt: str, backend: str, model: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM descriptions WHERE image_hash=? AND kind=? AND prompt=? AND backend=? AND model=?",
                (image_hash, kind, prompt, backend, model),
            ).fetchone()
        return row is not None

    def get_texts(
        self, image_hashes: Sequence[str], kind: str, model: str | None = None, prompt: str | None = None
    ) -> list[str | None]:
        """The text of each image for `kind` (None where there is none); the newest row wins when several match."""
        found: dict[str, str] = {}
        clauses, params = ["kind=?"], [kind]
        if model is not None:
            clauses.append("model=?")
            params.append(model)
        if prompt is not None:
            clauses.append("prompt=?")
            params.append(prompt)
        wanted = list(dict.fromkeys(image_hashes))
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = self._db.execute(
                    f"SELECT image_hash, text FROM descriptions WHERE {' AND '.join(clauses)} "
                    f"AND image_hash IN ({','.join('?' * len(chunk))}) ORDER BY created",
                    (*params, *chunk),
                ).fetchall()
                found.update(rows)
        return [found.get(h) for h in image_hashes]

    def rows(self, dataset: str | None = None) -> Iterable[dict]:
        with self._lock:
            cursor = self._db.execute(
                "SELECT image_hash, kind, prompt, backend, model, text, image, dataset, meta, created FROM descriptions"
                + (" WHERE dataset=?" if dataset else "")
                + " ORDER BY created",
                (dataset,) if dataset else (),
            )
            names = [d[0] for d in cursor.description]
            records = cursor.fetchall()
        for record in records:
            row = dict(zip(names, record))
            row["meta"] = json.loads(row["meta"]) if row["meta"] else None
            yield row
