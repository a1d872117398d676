"""Image features of a whole split, and the on-disk cache that makes zero-shot work happen once."""

from __future__ import annotations

import hashlib
import warnings
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from latteclip.data import ImageDataset, collate
from latteclip.models import LoadedModel, TokenCache, class_text_features
from latteclip.paths import atomic_write_bytes, cache_dir


def dataset_fingerprint(dataset: ImageDataset) -> str:
    digest = hashlib.sha1()
    digest.update(f"{dataset.info.name}|{dataset.split}|{dataset.source.location}".encode())
    for sample in dataset.samples:
        digest.update(f"{sample.path}:{sample.label};".encode())
    return digest.hexdigest()


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: ImageDataset,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    desc: str = "features",
    cache_key: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, d] of every image and a mask of the readable ones (unreadable rows are zero).

    With `cache_key` (a description of the frozen weights), the result is stored on disk and the
    next call with the same weights, samples and transform reads it back instead.
    """
    path = None
    if cache_key is not None:
        key = hashlib.sha1(f"{cache_key}|{dataset_fingerprint(dataset)}|{dataset.transform}".encode()).hexdigest()
        path = cache_dir() / "features" / f"{key}.pt"
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu")
                return saved["features"], saved["valid"]
            except Exception:  # a damaged cache entry is recomputed, never trusted
                warnings.warn(f"ignoring unreadable feature cache {path}", stacklevel=2)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    features: torch.Tensor | None = None
    valid = torch.zeros(len(dataset), dtype=torch.bool)
    for batch in tqdm(loader, desc=desc, leave=False, unit="batch"):
        if batch["image"] is None:
            continue
        out = encode(batch["image"].to(device, non_blocking=True)).float().cpu()
        if features is None:
            features = torch.zeros(len(dataset), out.shape[1])
        features[batch["index"]] = out
        valid[batch["index"]] = True
    if features is None:
        features = torch.zeros(len(dataset), 1)
    if path is not None:
        import io

        buffer = io.BytesIO()
        torch.save({"features": features, "valid": valid}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return features, valid


def predict_labels(features: torch.Tensor, valid: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """argmax_c <f(x), z_c>; -1 where the image could not be read."""
    labels = (features @ classifier.float().cpu().t()).argmax(dim=-1)
    labels[~valid] = -1
    return labels


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
    """c_zs (method.md 1.1) of every image of `dataset` (evaluation transform) with the frozen model.

    The image features are cached on disk under the weights, so training and the description
    stage, which both need these labels, compute them once between them.
    """
    features, valid = extract_features(
        lambda x: torch.nn.functional.normalize(loaded.model.encode_image(x), dim=-1),
        dataset,
        device,
        batch_size,
        workers,
        desc="zero-shot labels",
        cache_key=f"{loaded.model_name}|{loaded.weights_id}|image",
    )
    classifier = class_text_features(loaded.model, tokens, classnames, [template], device)
    return predict_labels(features, valid, classifier)
