"""One loader for OpenCLIP models: a pretrained tag, an `hf-hub:` id, or a local weights file."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import open_clip
import torch

from latteclip.errors import LatteclipError

_CONFIGS_ADDED = False
RANDOM_WEIGHTS = ("", "none", "random")


def register_project_configs() -> None:
    """Add the project's tiny model configs (for tests and the demo) to OpenCLIP's registry."""
    global _CONFIGS_ADDED
    if not _CONFIGS_ADDED:
        open_clip.add_model_config(Path(str(resources.files("latteclip.models").joinpath("model_configs"))))
        _CONFIGS_ADDED = True


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_name: str
    pretrained: str
    image_size: int
    mean: tuple
    std: tuple

    @property
    def weights_id(self) -> str:
        """Identifies the starting weights in cache keys: a file's size and mtime stand in for its content."""
        path = Path(self.pretrained)
        if self.pretrained and path.is_file():
            stat = path.stat()
            return f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
        return self.pretrained or "random"


def _offline_hint(model_name: str, pretrained: str, err: Exception) -> LatteclipError:
    return LatteclipError(
        f"could not fetch weights for {model_name} '{pretrained}': no network was reached ({type(err).__name__}). "
        f"Download them on a machine with network (e.g. open_clip_pytorch_model.bin from the model's hub page) "
        f"and pass --pretrained /path/to/weights.bin (.pt, .bin or .safetensors)"
    )


def _network_reachable(host: str = "huggingface.co") -> bool:
    """A DNS look-up answers at once offline, where a download would retry for a minute first."""
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def load_clip(model_name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Build `model_name` with weights from `pretrained` (tag, file path, or none for random weights)."""
    register_project_configs()
    pretrained = pretrained or ""
    is_hub = model_name.startswith("hf-hub:")
    if not is_hub and model_name not in open_clip.list_models():
        raise LatteclipError(
            f"unknown model '{model_name}': use an OpenCLIP name (e.g. ViT-B-32), an hf-hub: id, or latte-tiny"
        )
    is_file = bool(pretrained) and pretrained.lower() not in RANDOM_WEIGHTS and (
        os.sep in pretrained or Path(pretrained).suffix in (".pt", ".bin", ".safetensors", ".pth")
    )
    if is_file and not Path(pretrained).is_file():
        raise LatteclipError(f"weights file {pretrained} does not exist")
    downloads = is_hub or (bool(pretrained) and not is_file and pretrained.lower() not in RANDOM_WEIGHTS)
    if downloads and not _network_reachable():
        raise _offline_hint(model_name, pretrained or model_name, OSError("DNS look-up of huggingface.co failed"))
    try:
        if is_hub:
            model = open_clip.create_model(model_name, device=device)
        elif is_file:
            model = open_clip.create_model(model_name, pretrained=pretrained, device=device, weights_only=False)
        elif pretrained.lower() in RANDOM_WEIGHTS:
            model = open_clip.create_model(model_name, device=device)
        else:
            known = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in known:
                raise LatteclipError(f"unknown pretrained tag '{pretrained}' for {model_name}; known: {', '.join(known) or 'none'}")
            model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
    except LatteclipError:
        raise
    except RuntimeError as err:
        if "size mismatch" in str(err) or "Missing key" in str(err) or "Unexpected key" in str(err):
            raise LatteclipError(f"weights {pretrained} do not fit {model_name}: {str(err).splitlines()[0]}") from err
        if is_file:
            raise LatteclipError(f"weights file {pretrained} cannot be loaded: {str(err).splitlines()[0]}") from err
        raise _offline_hint(model_name, pretrained, err) from err
    except (OSError, ConnectionError, ValueError) as err:
        if is_file:
            raise LatteclipError(f"weights file {pretrained} cannot be loaded: {err}") from err
        raise _offline_hint(model_name, pretrained, err) from err
    except Exception as err:  # huggingface_hub raises its own exception types when offline
        if type(err).__module__.startswith(("huggingface_hub", "requests", "urllib3", "httpx")):
            raise _offline_hint(model_name, pretrained, err) from err
        raise
    tokenizer = open_clip.get_tokenizer(model_name)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return LoadedModel(model, tokenizer, model_name, pretrained, image_size, mean, std)
