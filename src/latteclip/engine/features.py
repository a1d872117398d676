"""Image features of a whole split, and the on-disk cache that makes zero-shot work happen once."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from latteclip import distributed
from latteclip.data import ImageDataset, collate
from latteclip.models import LoadedModel, TokenCache, class_text_features
from latteclip.paths import atomic_write_bytes, cache_dir


def dataset_fingerprint(dataset: ImageDataset) -> str:
    digest = hashlib.sha1()
    digest.update(f"{dataset.info.name}|{dataset.split}|{dataset.source.location}".encode())
    for sample in dataset.samples:
        digest.update(f"{sample.path}:{sample.label};".encode())
    return digest.hexdigest()


def compute_precision(device: torch.device) -> str:
    """The precision an encoder called now on `device` computes in: the autocast dtype if autocast is on, else fp32."""
    if torch.is_autocast_enabled(device.type):
        return str(torch.get_autocast_dtype(device.type)).removeprefix("torch.")
    return "fp32"


def feature_cache_key(cache_key: str, dataset: ImageDataset, device: torch.device | str) -> str:
    """The cache entry of `cache_key`'s features of `dataset`: also keyed by the device type and the precision in use,
    so that a bf16 GPU pass is never read back by an fp32 CPU run, nor the reverse."""
    device = torch.device(device)
    parts = f"{cache_key}|{device.type}|{compute_precision(device)}|{dataset_fingerprint(dataset)}|{dataset.transform}"
    return hashlib.sha1(parts.encode()).hexdigest()


def feature_loader(dataset: Dataset, batch_size: int, workers: int, persistent: bool = False) -> DataLoader:
    """This rank's share of `dataset` (every W-th image under torchrun) in order, for a whole-split feature pass.

    `persistent`: the workers are forked once and serve every later pass of the same loader (a run that encodes
    its training split again at each refresh), instead of once per pass.
    """
    shard = list(range(distributed.rank(), len(dataset), distributed.world_size()))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=shard,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=persistent and workers > 0,
        # a generator of its own, so that evaluating never draws from the global RNG that training uses
        generator=torch.Generator().manual_seed(0),
    )


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,  # an ImageDataset when `cache_key` is given (its fingerprint keys the cache)
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    desc: str = "features",
    cache_key: str | None = None,
    loader: DataLoader | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, d] of every image and a mask of the readable ones (unreadable rows are zero).

    With `cache_key` (a description of the frozen weights), the result is stored on disk and the
    next call with the same weights, samples, transform, device type and precision reads it back instead. Under torchrun
    each rank encodes every W-th image and the shards are gathered, so all ranks get all rows. `loader`: a
    `feature_loader` of `dataset` kept by the caller (one pass after another), else one is built for this pass.
    """
    path = None
    if cache_key is not None:
        path = cache_dir() / "features" / f"{feature_cache_key(cache_key, dataset, device)}.safetensors"
        saved = _read_cache(path)
        # every rank reads the cache or none does: one that computed alone would wait forever in the merge
        if distributed.every_rank(saved is not None):
            return saved
    if loader is None:
        loader = feature_loader(dataset, batch_size, workers)
    features: torch.Tensor | None = None
    valid = torch.zeros(len(dataset), dtype=torch.bool)
    for batch in tqdm(loader, desc=desc, leave=False, unit="batch", disable=not distributed.is_main()):
        if batch["image"] is None:
            continue
        out = encode(batch["image"].to(device, non_blocking=True)).float().cpu()
        if features is None:
            features = torch.zeros(len(dataset), out.shape[1])
        features[batch["index"]] = out
        valid[batch["index"]] = True
    if features is None:
        features = torch.zeros(len(dataset), 1)
    if distributed.is_distributed():
        features, valid = _merge_shards(features, valid, device)
    if path is not None and distributed.is_main():
        atomic_write_bytes(path, safetensors_bytes({"features": features.contiguous(), "valid": valid}))
    return features, valid


def _read_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A cached (features, valid) pair, or None when there is none (or it is damaged: recomputed, never trusted)."""
    if not path.is_file():
        return None
    try:  # safetensors: reading a cache entry someone else wrote cannot run code
        saved = load_file(str(path))
        return saved["features"], saved["valid"]
    except Exception:
        warnings.warn(f"ignoring unreadable feature cache {path}", stacklevel=2)
        return None


def _merge_shards(
    features: torch.Tensor, valid: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank filled its own rows; summing over ranks puts all rows everywhere."""
    width = torch.tensor([features.shape[1]], device=device)
    width = int(distributed.gather(width).max())
    full = torch.zeros(features.shape[0], width, device=device)
    full[:, : features.shape[1]] = features.to(device) if features.shape[1] == width else 0
    full = distributed.all_reduce_sum(full)
    counts = distributed.all_reduce_sum(valid.to(device=device, dtype=torch.int32))
    return full.cpu(), counts.cpu() > 0


def predict_labels(features: torch.Tensor, valid: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """argmax_c <f(x), z_c>; -1 where the image could not be read."""
    if not bool(valid.any()):  # nothing readable: there are no features to compare
        return torch.full((len(valid),), -1, dtype=torch.long)
    labels = (features @ classifier.float().cpu().t()).argmax(dim=-1)
    labels[~valid] = -1
    return labels


def frozen_image_features(
    loaded: LoadedModel, dataset: ImageDataset, device: torch.device, batch_size: int = 256, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image features of the frozen model for every image of `dataset`, and which could be read.

    Cached on disk under the weights, so training, the description stage and analyses that need the
    zero-shot scores compute them once between them.
    """
    return extract_features(
        lambda x: torch.nn.functional.normalize(loaded.model.encode_image(x), dim=-1),
        dataset,
        device,
        batch_size,
        workers,
        desc="zero-shot labels",
        cache_key=f"{loaded.model_name}|{loaded.weights_id}|image",
    )


def zero_shot_labels(
    loaded: LoadedModel,
    tokens: TokenCache,
    classnames: list[str],
    template: str,
    dataset: ImageDataset,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
) -> torch.Tensor:
    """c_zs (method.md 1.1) of every image of `dataset` (evaluation transform) with the frozen model."""
    features, valid = frozen_image_features(loaded, dataset, device, batch_size, workers)
    classifier = class_text_features(loaded.model, tokens, classnames, [template], device)
    return predict_labels(features, valid, classifier)
