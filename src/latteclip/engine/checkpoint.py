"""Checkpoints written atomically: `last.pt` to resume a run, `final.pt` for eval, predict and export.

A checkpoint is a safetensors file: every tensor of the payload is a safetensors tensor, and the
rest of the payload (config, options, RNG states, counters) is JSON in the file's metadata, with
tensors referred to by name. Reading one parses JSON and raw tensor bytes only, so a shared
checkpoint can never run code. Tuples, dicts with non-string keys (optimizer state) and numpy
arrays (numpy's RNG state) are tagged so that they come back as they were: resume stays exact.
Checkpoints of earlier versions (torch's pickle format) are read with `weights_only=True`, which
refuses any object that is not a tensor or a plain value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from latteclip.errors import LatteclipError
from latteclip.paths import atomic_write_bytes

FORMAT = "latteclip-checkpoint/1"
PICKLE_MAGIC = b"PK\x03\x04"  # torch.save's zip archive
_TAGS = ("$tensor", "$tuple", "$items", "$ndarray")


def _encode(value: Any, tensors: dict[str, torch.Tensor], storages: set[int]) -> Any:
    """`value` as JSON, its tensors moved into `tensors` (a tensor sharing storage is copied: safetensors refuses
    aliases)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in storages or tensor.untyped_storage().nbytes() != tensor.nbytes or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        storages.add(tensor.untyped_storage().data_ptr())
        name = f"t{len(tensors)}"
        tensors[name] = tensor
        return {"$tensor": name}
    if isinstance(value, np.ndarray):
        return {"$ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors, storages) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, storages) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _encode(v, tensors, storages) for k, v in value.items()}
        return {"$items": [[_encode(k, tensors, storages), _encode(v, tensors, storages)] for k, v in value.items()]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint holds tensors and plain values only, not {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        return tensors[value["$tensor"]]
    if "$tuple" in value:
        return tuple(_decode(v, tensors) for v in value["$tuple"])
    if "$items" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["$items"]}
    if "$ndarray" in value:
        return np.array(value["$ndarray"], dtype=np.dtype(value["dtype"]))
    return {k: _decode(v, tensors) for k, v in value.items()}


def checkpoint_bytes(payload: dict[str, Any]) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(payload, tensors, set()))
    return safetensors_bytes(tensors, metadata={"format": FORMAT, "payload": tree})


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_bytes(path, checkpoint_bytes(payload))


def _load_legacy(file: Path) -> dict[str, Any]:
    """A checkpoint of an earlier version (torch's zip of pickles), with nothing but tensors and plain values."""
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LatteclipError(
            f"checkpoint {file} is a pickle holding objects other than tensors and plain values "
            f"({type(err).__name__}); it was not loaded, since unpickling it could run code: use a final.pt/last.pt "
            "written by this version"
        ) from err
    if not isinstance(payload, dict):
        raise LatteclipError(f"checkpoint {file} is not a latteclip checkpoint (it holds a {type(payload).__name__})")
    return payload


def is_pickle_checkpoint(path: Path) -> bool:
    """A checkpoint written by torch.save (versions before the safetensors format): a zip archive."""
    with open(path, "rb") as handle:
        return handle.read(4) == PICKLE_MAGIC


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise LatteclipError(f"checkpoint {path} does not exist")
    data = file.read_bytes()  # read whole, not mapped: the tensors stay valid when the file is rewritten
    if data[:4] == PICKLE_MAGIC:  # torch.save's zip: an earlier version's checkpoint
        return _load_legacy(file)
    try:
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, not {FORMAT}")
        payload = _decode(json.loads(metadata["payload"]), safetensors_load(data))
    except Exception as err:  # truncated, corrupt or foreign files all mean the same to the user
        reason = (str(err).splitlines() or [""])[0]
        raise LatteclipError(
            f"checkpoint {path} is not a readable latteclip checkpoint ({type(err).__name__}: {reason})"
        ) from err
    if not isinstance(payload, dict):
        raise LatteclipError(f"checkpoint {path} is not a latteclip checkpoint")
    return payload


def load_final_checkpoint(path: str | Path) -> dict[str, Any]:
    """A finished run's final.pt (it carries the method to rebuild); last.pt is refused by name."""
    payload = load_checkpoint(path)
    if "method" not in payload:
        raise LatteclipError(f"{path} is not a final checkpoint (use a run's final.pt, not last.pt)")
    return payload
