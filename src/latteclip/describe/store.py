"""The description store: SQLite, keyed by image content hash, kind, prompt, backend, model and variant.

Every answer is committed as it arrives, so a killed `describe` loses nothing and a rerun asks
only for what is missing. Training reads texts back by image hash, so a description made for
an image is found again whatever path or archive the image is read from.

`variant` tells apart answers to the same prompt about different pictures of one anchor image:
a group description is stored under its anchor's hash, and its variant names the exact group
(size and members), so a different draw is a new request instead of a false cache hit.

A description set records how one description stage made its texts (describer, prompts, group size and draw,
seed: its contract) and, for each image and kind, the exact row it asked for; the method that reads
descriptions picks a set and reads those rows back, instead of re-deriving them by convention.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from latteclip.errors import LatteclipError
from latteclip.paths import atomic_write_bytes, cache_dir

# image/group/class: the texts of method.md 1.2; zeroshot: the LMM's multiple-choice answer (method.md 2);
# classes: a text-only LLM's descriptions of a class name (CoFT+), stored under CLASS_KEY_PREFIX + the name
KINDS = ("image", "group", "class", "zeroshot", "classes")
CLASS_KEY_PREFIX = "class:"
DESCRIPTION_KINDS = ("image", "group", "class")
# appended to the model name of descriptions whose groups were drawn from the TRUE labels
# (describe --true-class-members): reading texts without naming a model skips them, so training reads them only when
# asked by that exact model name
ANALYSIS_TAG = "+true-class-members"

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
    variant TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (image_hash, kind, prompt, backend, model, variant)
);
CREATE INDEX IF NOT EXISTS by_hash_kind ON descriptions (image_hash, kind);
CREATE TABLE IF NOT EXISTS description_sets (
    name TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    contract TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS set_members (
    set_name TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    PRIMARY KEY (set_name, image_hash, kind)
);
"""
COLUMNS = ("image_hash", "kind", "prompt", "backend", "model", "text", "image", "dataset", "meta", "created", "variant")
EXPORT_FIELDS = (
    "image",
    "image_hash",
    "kind",
    "text",
    "prompt",
    "backend",
    "model",
    "variant",
    "dataset",
    "meta",
    "created",
)


@dataclass(frozen=True)
class DescriptionSet:
    """What one description stage asked for: its name (a digest of the contract and the rows) and its contract."""

    name: str
    contract: dict  # dataset, describer, prompts, group_size, group_draw, seed, with_label, zero-shot labels, analysis
    created: float
    images: int  # how many of the images asked about it holds


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
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._add_variant_column()
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise LatteclipError(
                f"description store {self.path} is not a readable SQLite file ({err}); pass another --store"
            ) from err

    def _add_variant_column(self) -> None:
        """Stores written before `variant` existed are rebuilt once with variant '' (their rows are kept)."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(descriptions)")]
        if not columns or "variant" in columns:
            return
        with self._db:
            self._db.execute("ALTER TABLE descriptions RENAME TO descriptions_before_variant")
            self._db.execute("DROP INDEX IF EXISTS by_hash_kind")
            self._db.executescript(SCHEMA)
            old = ", ".join(COLUMNS[:-1])
            self._db.execute(
                f"INSERT INTO descriptions ({old}, variant) SELECT {old}, '' FROM descriptions_before_variant"
            )
            self._db.execute("DROP TABLE descriptions_before_variant")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DescriptionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        variant: str = "",
    ) -> None:
        self.put_many([(image_hash, kind, prompt, backend, model, text, image, dataset, meta, variant)])

    def put_many(self, rows: Sequence[tuple]) -> None:
        """Insert (image_hash, kind, prompt, backend, model, text, image, dataset, meta, variant) rows in one commit;
        a failed write is rolled back whole (the connection as a context manager), so no later commit stores it."""
        for row in rows:
            if row[1] not in KINDS:
                raise ValueError(f"kind must be one of {KINDS}, not {row[1]!r}")
        now = time.time()
        with self._lock, self._db:
            self._db.executemany(
                f"INSERT OR REPLACE INTO descriptions ({', '.join(COLUMNS)}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(*row[:8], json.dumps(row[8]) if row[8] else None, now, row[9]) for row in rows],
            )

    def has(self, image_hash: str, kind: str, prompt: str, backend: str, model: str, variant: str = "") -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM descriptions WHERE image_hash=? AND kind=? AND prompt=? AND backend=? AND model=? AND "
                "variant=?",
                (image_hash, kind, prompt, backend, model, variant),
            ).fetchone()
        return row is not None

    def keys(self, backend: str, model: str) -> set[tuple[str, str, str, str]]:
        """Every (image_hash, kind, prompt, variant) answered by this backend and model: what a run can skip."""
        with self._lock:
            rows = self._db.execute(
                "SELECT image_hash, kind, prompt, variant FROM descriptions WHERE backend=? AND model=?",
                (backend, model),
            ).fetchall()
        return set(rows)

    def get_texts(
        self,
        image_hashes: Sequence[str | None],
        kind: str,
        model: str | None = None,
        prompt: str | None = None,
        variant: str | None = None,
        preferred_variants: Sequence[str | None] | None = None,
    ) -> list[str | None]:
        """The text of each image for `kind` (None where there is none, or no hash); the newest row wins when several
        match.

        `preferred_variants` (one per image) names the row that wins over newer ones when it is stored (e.g. the group
        a run drew for that image), so what a run reads does not change when other draws are described later.
        Descriptions of analysis groups (model name ending in ANALYSIS_TAG) are read only when `model` names them.
        """
        preferred = {} if preferred_variants is None else dict(zip(image_hashes, preferred_variants))
        found: dict[str, str] = {}
        exact: set[str] = set()
        clauses, params = ["kind=?"], [kind]
        for column, value in (("model", model), ("prompt", prompt), ("variant", variant)):
            if value is not None:
                clauses.append(f"{column}=?")
                params.append(value)
        if model is None:
            clauses.append("substr(model, -?) != ?")
            params += [len(ANALYSIS_TAG), ANALYSIS_TAG]
        wanted = [h for h in dict.fromkeys(image_hashes) if h is not None]
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = self._db.execute(
                    f"SELECT image_hash, text, variant FROM descriptions WHERE {' AND '.join(clauses)} "
                    f"AND image_hash IN ({','.join('?' * len(chunk))}) ORDER BY created, rowid",
                    (*params, *chunk),
                ).fetchall()
                for image_hash, text, row_variant in rows:
                    if image_hash not in exact:
                        found[image_hash] = text
                    if preferred.get(image_hash) is not None and row_variant == preferred[image_hash]:
                        exact.add(image_hash)
        return [found.get(h) for h in image_hashes]

    # --- description sets: how texts were made, read back by the method that uses them --------------------------
    def record_set(self, dataset: str, contract: dict, members: Sequence[tuple[str, str, str, str, str]]) -> str:
        """Record a description stage's contract and its (image_hash, kind, prompt, model, variant) rows; its name.

        The same contract over the same rows is one set, recorded once (a rerun of the stage finds it).
        """
        rows = sorted(set(members))
        name = hashlib.sha1(json.dumps([dataset, contract, rows], sort_keys=True).encode()).hexdigest()[:16]
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO description_sets VALUES (?,?,?,?)",
                (name, dataset, json.dumps(contract, sort_keys=True), time.time()),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO set_members VALUES (?,?,?,?,?,?)", [(name, *row) for row in rows]
            )
        return name

    def has_sets(self, dataset: str, kind: str) -> bool:
        """Whether a description stage recorded its contract for `kind` texts of `dataset` (an earlier version's
        stores have none)."""
        with self._lock:
            found = self._db.execute(
                "SELECT 1 FROM set_members m JOIN description_sets s ON s.name = m.set_name "
                "WHERE s.dataset=? AND m.kind=? LIMIT 1",
                (dataset, kind),
            ).fetchone()
        return found is not None

    def sets_for(
        self, dataset: str, image_hashes: Sequence[str | None], kind: str, model: str | None = None
    ) -> list[DescriptionSet]:
        """The sets of `dataset` holding `kind` rows of some of these images, oldest first.

        Sets whose rows are by `model` when it is given; otherwise none of analysis groups (ANALYSIS_TAG models),
        which are read only when named.
        """
        hashes = [h for h in dict.fromkeys(image_hashes) if h is not None]
        counts: Counter = Counter()
        with self._lock:
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                query = (
                    f"SELECT set_name, COUNT(*) FROM set_members WHERE kind=? AND image_hash IN "
                    f"({','.join('?' * len(chunk))}) AND "
                    + ("model=?" if model else "substr(model, -?) != ?")
                    + " GROUP BY set_name"
                )
                params = (kind, *chunk, *((model,) if model else (len(ANALYSIS_TAG), ANALYSIS_TAG)))
                counts.update(dict(self._db.execute(query, params).fetchall()))
            found = self._db.execute(
                "SELECT name, contract, created FROM description_sets WHERE dataset=? ORDER BY created, rowid",
                (dataset,),
            ).fetchall()
        return [
            DescriptionSet(name, json.loads(contract), created, counts[name])
            for name, contract, created in found
            if counts[name]
        ]

    def set_rows(self, name: str, image_hashes: Sequence[str | None], kind: str) -> list[tuple[str | None, str | None]]:
        """(text, variant) of each image's `kind` row in the set (None, None where it has none; text None where
        the row was asked for but not answered yet); the newest answer wins when the row was answered twice."""
        found: dict[str, tuple[str | None, str | None]] = {}
        hashes = [h for h in dict.fromkeys(image_hashes) if h is not None]
        with self._lock:
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                rows = self._db.execute(
                    "SELECT m.image_hash, d.text, m.variant FROM set_members m LEFT JOIN descriptions d ON "
                    "d.image_hash=m.image_hash AND d.kind=m.kind AND d.prompt=m.prompt AND d.model=m.model AND "
                    "d.variant=m.variant WHERE m.set_name=? AND m.kind=? AND m.image_hash IN "
                    f"({','.join('?' * len(chunk))}) "
                    "ORDER BY d.created, d.rowid",
                    (name, kind, *chunk),
                ).fetchall()
                for image_hash, text, variant in rows:
                    found[image_hash] = (text, variant)
        return [found.get(h, (None, None)) if h is not None else (None, None) for h in image_hashes]

    def class_texts(self, dataset: str) -> dict[str, list[str]]:
        """The newest description set of `dataset` with kind `classes` rows: each class name's answered descriptions,
        in question order ({} when no stage asked them)."""
        with self._lock:
            newest = self._db.execute(
                "SELECT s.name FROM description_sets s JOIN set_members m ON m.set_name = s.name "
                "WHERE s.dataset=? AND m.kind='classes' ORDER BY s.created DESC, s.rowid DESC LIMIT 1",
                (dataset,),
            ).fetchone()
            if newest is None:
                return {}
            rows = self._db.execute(
                "SELECT m.image_hash, d.image, d.text FROM set_members m JOIN descriptions d ON "
                "d.image_hash=m.image_hash AND d.kind=m.kind AND d.prompt=m.prompt AND d.model=m.model AND "
                "d.variant=m.variant WHERE m.set_name=? AND m.kind='classes' ORDER BY d.created, d.rowid",
                (newest[0],),
            ).fetchall()
        answers = {key: (name, text) for key, name, text in rows}  # the newest answer of each question
        texts: dict[str, list[str]] = {}
        for key in sorted(answers, key=lambda k: int(k.rsplit(":", 1)[1])):
            name, text = answers[key]
            texts.setdefault(name, []).append(text)
        return texts

    def rows(self, dataset: str | None = None, image_hashes: Iterable[str] | None = None) -> Iterator[dict]:
        """All rows, oldest first; only those of `dataset` and/or of the given image hashes when asked."""
        query = f"SELECT {', '.join(COLUMNS)} FROM descriptions"
        clauses, params = [], []
        if dataset:
            clauses.append("dataset=?")
            params.append(dataset)
        if image_hashes is not None:
            # a temporary table keeps the query one statement however many images a dataset has
            wanted = sorted(set(image_hashes))
            with self._lock:
                self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted_hashes (image_hash TEXT PRIMARY KEY)")
                self._db.execute("DELETE FROM wanted_hashes")
                self._db.executemany("INSERT INTO wanted_hashes VALUES (?)", [(h,) for h in wanted])
            clauses.append("image_hash IN (SELECT image_hash FROM wanted_hashes)")
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        with self._lock:
            records = self._db.execute(query + " ORDER BY created, rowid", params).fetchall()
        for record in records:
            row = dict(zip(COLUMNS, record))
            row["meta"] = json.loads(row["meta"]) if row["meta"] else None
            yield row

    def counts(self, dataset: str | None = None) -> Counter:
        """Number of rows per (kind, backend, model), for summaries."""
        query = "SELECT kind, backend, model, COUNT(*) FROM descriptions"
        params: tuple = ()
        if dataset:
            query += " WHERE dataset=?"
            params = (dataset,)
        with self._lock:
            rows = self._db.execute(query + " GROUP BY kind, backend, model", params).fetchall()
        return Counter({(kind, backend, model): n for kind, backend, model, n in rows})

    # --- exchange as JSON lines ----------------------------------------------------------------
    def export_jsonl(
        self, path: str | Path, images: Mapping[str, str], kinds: Sequence[str] = DESCRIPTION_KINDS
    ) -> int:
        """Write every row about the images `images` maps (hash -> path relative to the dataset root).

        One JSON object per line with the image's path, so the file can be imported next to a copy of
        the dataset on another machine. Returns the number of lines written.
        """
        lines = []
        for row in self.rows(image_hashes=images):
            if row["kind"] not in kinds:
                continue
            row["image"] = images[row["image_hash"]]
            lines.append(json.dumps({field: row[field] for field in EXPORT_FIELDS}, ensure_ascii=False))
        atomic_write_bytes(Path(path), ("\n".join(lines) + "\n" if lines else "").encode("utf-8"))
        return len(lines)

    def import_jsonl(
        self, path: str | Path, hash_of_image: Callable[[str], str | None], dataset: str | None = None
    ) -> int:
        """Load rows written by `export_jsonl` (or by hand): each needs kind, text, prompt, model, and
        image_hash or image (a path under the dataset root, hashed through `hash_of_image`).

        The whole file is checked before anything is written, so a bad line changes nothing.
        """
        file = Path(path)
        if not file.is_file():
            raise LatteclipError(f"import file {path} does not exist")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise LatteclipError(
                f"import file {path} is not UTF-8 text (byte {err.start}); export it again with --export, or save it "
                "as UTF-8"
            ) from err
        records = [
            _import_record(line, f"{path}, line {number}", hash_of_image)
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        ]
        rows = [
            (
                image_hash,
                record["kind"],
                record["prompt"],
                record.get("backend") or "import",
                record["model"],
                record["text"],
                record.get("image"),
                dataset or record.get("dataset"),
                record.get("meta"),
                record.get("variant") or "",
            )
            for image_hash, record in records
        ]
        self.put_many(rows)
        for name in sorted({row[7] or "" for row in rows}):  # what was imported is read back as its own set
            members = [(row[0], row[1], row[2], row[4], row[9]) for row in rows if (row[7] or "") == name]
            self.record_set(name, {"describer": f"imported from {file.name}"}, members)
        return len(records)


def _import_record(line: str, where: str, hash_of_image: Callable[[str], str | None]) -> tuple[str, dict]:
    """(image hash, record) of one line of an import file; a LatteclipError naming the line when it cannot be stored."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise LatteclipError(f"{where} is not valid JSON: {err.msg}") from err
    if not isinstance(record, dict):
        raise LatteclipError(f"{where} must be a JSON object")
    missing = [f for f in ("kind", "text", "prompt", "model") if not isinstance(record.get(f), str)]
    if missing:
        raise LatteclipError(
            f"{where} lacks {', '.join(missing)} (each line needs kind, text, prompt, model and image or image_hash)"
        )
    if record["kind"] not in KINDS:
        raise LatteclipError(f"{where}: kind '{record['kind']}' must be one of {', '.join(KINDS)}")
    image_hash = record.get("image_hash")
    if not image_hash:
        if not record.get("image"):
            raise LatteclipError(f"{where} names no image: give image (a path under the dataset root) or image_hash")
        image_hash = hash_of_image(record["image"])
        if image_hash is None:
            raise LatteclipError(f"{where}: image {record['image']} is not in the dataset; check --dataset/--root")
    return image_hash, record
