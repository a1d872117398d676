"""Where caches live: one folder that users can move with LATTECLIP_CACHE."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from latteclip.errors import LatteclipError


def cache_dir() -> Path:
    """The project's cache folder (zero-shot features, the demo's pre-trained model, descriptions)."""
    root = os.environ.get("LATTECLIP_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        path = Path(base) / "latteclip"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a reader (or a killed run) never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path, os.getpid())
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt leaves no partial file behind
        tmp.unlink(missing_ok=True)
        raise


def temp_name(path: Path, pid: int | str) -> Path:
    """Where `atomic_write_bytes` writes `path` before renaming it (same folder: the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp{pid}")


def remove_stale_temp_files(path: Path) -> None:
    """Temporary copies of `path` that a killed process left (a SIGKILL cannot be caught)."""
    for stale in path.parent.glob(temp_name(path, "*").name):
        if stale.name[len(temp_name(path, "").name) :].isdigit():
            stale.unlink(missing_ok=True)


def check_writable_folder(folder: Path, label: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written (the nearest existing parent is probed)."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise LatteclipError(f"{label} {folder}: {existing} is a file, not a folder; pass another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise LatteclipError(
            f"{label} {folder} is not writable ({err.strerror or err}); pass a folder you can write to"
        ) from err


def check_writable_file(file: Path, label: str, overwrite: bool = False) -> None:
    """Refuse, before any work, an output file whose folder cannot be created or written, or one that exists (what it
    holds is not replaced unasked)."""
    file = Path(file)
    if file.is_dir():
        raise LatteclipError(f"{label} {file} is a folder; pass a file name")
    if file.exists() and not overwrite:
        raise LatteclipError(f"{label} {file} exists; pass --overwrite to replace it, or another file")
    check_writable_folder(file.parent, label)
