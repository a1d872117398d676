"""One loader for OpenCLIP models: a pretrained tag, an `hf-hub:` id, or a local weights file."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import open_clip
import torch

from latteclip.data.transforms import eval_transform, train_transform
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
    init_digest: str = ""  # random weights depend on the seed: a digest of them tells runs apart

    def eval_transform(self) -> Callable:
        """The model's evaluation preprocessing (its image size and normalisation)."""
        return eval_transform(self.image_size, self.mean, self.std)

    def train_transform(self, augment: bool, policy: str) -> Callable:
        """Its train-time preprocessing: the crop and the augmentation policy (data/transforms.py)."""
        return train_transform(self.image_size, self.mean, self.std, augment, policy)

    @property
    def weights_id(self) -> str:
        """Identifies the starting weights in cache keys: a file's size and mtime stand in for its content."""
        path = Path(self.pretrained)
        if self.pretrained and path.is_file():
            stat = path.stat()
            return f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
        if self.init_digest:
            return f"random:{self.init_digest}"
        return self.pretrained


def _parameters_digest(model: torch.nn.Module, tensors: int = 4) -> str:
    """A digest of the first few parameter tensors: enough to tell two random initialisations apart."""
    digest = hashlib.sha1()
    for _, value in zip(range(tensors), model.state_dict().values()):
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _fetch_error(model_name: str, pretrained: str, err: Exception, online: bool) -> LatteclipError:
    reason = (
        "no network was reached" if not online else f"the download failed ({type(err).__name__}: {_first_line(err)})"
    )
    return LatteclipError(
        f"could not fetch weights for {model_name} '{pretrained}': {reason}. "
        f"Download them on a machine with network (e.g. open_clip_pytorch_model.bin from the model's hub page) "
        f"and pass --pretrained /path/to/weights.bin (.pt, .bin or .safetensors)"
    )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_fetch_error(err: Exception) -> bool:
    """Errors of a download (huggingface_hub, requests and urllib each raise their own types)."""
    return isinstance(err, (OSError, ValueError)) or type(err).__module__.startswith(
        ("huggingface_hub", "requests", "urllib3", "httpx")
    )


def _network_reachable(host: str = "huggingface.co") -> bool:
    """A DNS look-up answers at once offline, where a download would retry for a minute first."""
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_cache_only():
    """Offline, let huggingface_hub answer from its local cache at once (weights fetched earlier still load)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # without huggingface_hub, OpenCLIP only reads its own URL cache
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _quiet_root_logger():
    """OpenCLIP logs a failed download at ERROR level; the LatteclipError raised here says it in one line."""
    saved = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(saved)


def load_clip(model_name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Build `model_name` with weights from `pretrained` (tag, file path, or none for random weights)."""
    register_project_configs()
    pretrained = pretrained or ""
    is_hub = model_name.startswith("hf-hub:")
    if not is_hub and model_name not in open_clip.list_models():
        raise LatteclipError(
            f"unknown model '{model_name}': use an OpenCLIP name (e.g. ViT-B-32), an hf-hub: id, or latte-tiny"
        )
    is_random = pretrained.lower() in RANDOM_WEIGHTS
    is_file = not is_random and (
        os.sep in pretrained or Path(pretrained).suffix in (".pt", ".bin", ".safetensors", ".pth")
    )
    if is_file:
        if not Path(pretrained).is_file():
            raise LatteclipError(f"weights file {pretrained} does not exist")
        try:  # weights_only: a .pt/.bin is a pickle, and one holding anything but tensors could run code
            model = open_clip.create_model(model_name, pretrained=pretrained, device=device, weights_only=True)
        except pickle.UnpicklingError as err:
            raise LatteclipError(
                f"weights file {pretrained} cannot be loaded into {model_name}: it is not a plain state dict of "
                "tensors (anything else is refused, since unpickling it could run code); use a state dict (.bin/.pt) "
                "or a .safetensors file"
            ) from err
        except Exception as err:  # safetensors and state-dict errors all mean the same to the user
            raise LatteclipError(
                f"weights file {pretrained} cannot be loaded into {model_name}: {_first_line(err)}"
            ) from err
    elif is_random and not is_hub:
        model = open_clip.create_model(model_name, device=device)
    else:
        if not is_hub:
            known = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in known:
                raise LatteclipError(
                    f"unknown pretrained tag '{pretrained}' for {model_name}; known: {', '.join(known) or 'none'}"
                )
        online = _network_reachable()
        try:
            with _quiet_root_logger(), contextlib.nullcontext() if online else _hub_cache_only():
                if is_hub:
                    model = open_clip.create_model(model_name, device=device)
                else:
                    model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        except Exception as err:
            if online and not _is_fetch_error(err):
                raise
            raise _fetch_error(model_name, pretrained or model_name, err, online) from err
    tokenizer = open_clip.get_tokenizer(model_name)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    digest = _parameters_digest(model) if is_random and not is_hub else ""
    return LoadedModel(model, tokenizer, model_name, pretrained, image_size, mean, std, digest)
