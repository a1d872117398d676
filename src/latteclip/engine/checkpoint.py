"""Checkpoints written atomically: `last.pt` to resume a run, `final.pt` for eval, predict and export."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from latteclip.errors import LatteclipError
from latteclip.paths import atomic_write_bytes


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise LatteclipError(f"checkpoint {path} does not exist")
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:
        raise LatteclipError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err


def load_final_checkpoint(path: str | Path) -> dict[str, Any]:
    """A finished run's final.pt (it carries the method to rebuild); last.pt is refused by name."""
    payload = load_checkpoint(path)
    if "method" not in payload:
        raise LatteclipError(f"{path} is not a final checkpoint (use a run's final.pt, not last.pt)")
    return payload
