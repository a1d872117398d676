"""Shared fixtures: the real EuroSAT data beside the checkout, tiny models, quiet logs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LATTECLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
EUROSAT_DIR = SHARED_DATA / "eurosat"
EUROSAT_ZIP = EUROSAT_DIR / "EuroSAT.zip"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own cache folder, so tests never read a developer's cache."""
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    logging.getLogger().setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def eurosat_zip() -> Path:
    if not EUROSAT_ZIP.is_file():
        pytest.fail(f"EuroSAT archive not found at {EUROSAT_ZIP}: the tests need ../shared/data beside the checkout")
    return EUROSAT_ZIP


@pytest.fixture(scope="session")
def eurosat_folder(tmp_path_factory, eurosat_zip) -> Path:
    """A small extracted copy of the official layout (2750/<Class>/...) plus the split file."""
    import json
    import shutil
    import zipfile

    root = tmp_path_factory.mktemp("eurosat_extracted")
    split = json.loads((EUROSAT_DIR / "split_zhou_EuroSAT.json").read_text())
    keep: dict[str, list] = {}
    with zipfile.ZipFile(eurosat_zip) as archive:
        for part, entries in split.items():
            by_class: dict[int, int] = {}
            chosen = []
            for entry in entries:
                if by_class.get(entry[1], 0) < 6:
                    by_class[entry[1]] = by_class.get(entry[1], 0) + 1
                    chosen.append(entry)
                    target = root / "2750" / entry[0]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read("2750/" + entry[0]))
            keep[part] = chosen
    (root / "split_zhou_EuroSAT.json").write_text(json.dumps(keep))
    shutil.copystat(EUROSAT_DIR, root)
    return root
