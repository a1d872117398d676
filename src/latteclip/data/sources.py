"""Where image bytes come from: a folder on disk or a zip archive read in place (no extraction)."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

from latteclip.errors import LatteclipError


class ImageSource:
    """Reads image files by a path relative to the dataset's image folder."""

    location: str

    def read(self, relpath: str) -> bytes:
        raise NotImplementedError

    def exists(self, relpath: str) -> bool:
        raise NotImplementedError

    def list_files(self) -> list[str]:
        raise NotImplementedError

    def top_folders(self) -> list[str]:
        """The folders directly under the image folder, empty ones included (an empty class is an error)."""
        raise NotImplementedError


class FolderSource(ImageSource):
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.location = str(self.folder)

    def read(self, relpath: str) -> bytes:
        return (self.folder / relpath).read_bytes()

    def exists(self, relpath: str) -> bool:
        return (self.folder / relpath).is_file()

    def list_files(self) -> list[str]:
        """Every file below the folder, skipping hidden files and folders (.DS_Store, .ipynb_checkpoints)."""
        files = []
        for path in self.folder.rglob("*"):
            relative = path.relative_to(self.folder)
            if path.is_file() and not any(part.startswith(".") for part in relative.parts):
                files.append("/".join(relative.parts))
        return sorted(files)

    def top_folders(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _visible(name: str) -> bool:
    """False for what archivers add beside the data: __MACOSX/ resource forks, hidden files and folders."""
    return not name.startswith("__MACOSX/") and "/." not in "/" + name


class ZipSource(ImageSource):
    """A zip archive; the handle is opened per process because zip handles must not cross a fork."""

    def __init__(self, archive: Path, inner_dir: str):
        self.archive = Path(archive)
        self.prefix = f"{inner_dir.strip('/')}/" if inner_dir.strip("/") else ""
        self.location = f"{self.archive}:{self.prefix}"
        self._handle: zipfile.ZipFile | None = None
        self._pid = -1
        self._names: set[str] | None = None

    def _zip(self) -> zipfile.ZipFile:
        if self._handle is None or self._pid != os.getpid():
            try:
                self._handle = zipfile.ZipFile(self.archive)
            except (zipfile.BadZipFile, OSError) as err:
                raise LatteclipError(
                    f"{self.archive} cannot be read as a zip archive ({err}); check the download"
                ) from err
            self._pid = os.getpid()
        return self._handle

    def within(self, inner_dir: str) -> ZipSource:
        """The same archive seen from `inner_dir`, sharing the open handle and the name list (read once)."""
        view = ZipSource(self.archive, inner_dir)
        view._handle, view._pid, view._names = self._handle, self._pid, self._names
        return view

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def _namelist(self) -> set[str]:
        """The archive's files, without folder entries and hidden files (__MACOSX/, .DS_Store)."""
        if self._names is None:
            self._names = {n for n in self._zip().namelist() if not n.endswith("/") and _visible(n)}
        return self._names

    def read(self, relpath: str) -> bytes:
        try:
            return self._zip().read(self.prefix + relpath)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
            # a damaged or encrypted member is one unreadable image (counted and skipped), not the end of the run
            raise OSError(f"damaged archive member ({type(err).__name__}: {err})") from err

    def exists(self, relpath: str) -> bool:
        return self.prefix + relpath in self._namelist()

    def list_files(self) -> list[str]:
        n = len(self.prefix)
        return sorted(name[n:] for name in self._namelist() if name.startswith(self.prefix))

    def top_folders(self) -> list[str]:
        n = len(self.prefix)
        folders = set()
        for name in self._zip().namelist():  # folder entries too, so that an empty class folder shows
            parts = name[n:].split("/") if name.startswith(self.prefix) and _visible(name) else []
            if len(parts) > 1 and parts[0]:
                folders.add(parts[0])
        return sorted(folders)


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def scan_class_folders(source: ImageSource) -> tuple[list[str], dict[int, list[str]]]:
    """Class keys (sorted folder names) and the images under each; an empty class folder is an error."""
    folders = source.top_folders()
    if not folders:
        raise LatteclipError(f"{source.location} has no class folders (expected one folder of images per class)")
    index = {k: i for i, k in enumerate(folders)}
    by_class: dict[int, list[str]] = {i: [] for i in range(len(folders))}
    for f in source.list_files():
        if "/" in f and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
            by_class[index[f.split("/")[0]]].append(f)
    empty = [folders[i] for i, v in by_class.items() if not v]
    if empty:
        raise LatteclipError(
            f"class folder {source.location.rstrip('/:')}/{empty[0]} has no images; remove it or add images"
        )
    return folders, by_class
