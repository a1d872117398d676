"""Accuracy of a method's classifier on a labelled split (top-1, per class, confusion matrix): one evaluation
for training runs, `latteclip eval` and the experiments."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from latteclip.config import Inference
from latteclip.data import ImageDataset
from latteclip.engine.features import extract_features, predict_labels
from latteclip.engine.session import resolve_precision

if TYPE_CHECKING:
    from latteclip.methods.base import Method


def autocast_for_precision(precision: str, device: torch.device):
    """Autocast to what `resolve_precision` says the run computes in (none for fp32). `eval` uses the run's setting."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if resolved == "bf16" else torch.float16)


def evaluate(method: Method, test_set: ImageDataset, inference: Inference, cache_key: str | None = None) -> dict:
    """The accuracy report of `method` on `test_set` (with its evaluation transform), in eval mode, on the method's
    device with the batch size, workers and precision of `inference` (the run's precision).

    `cache_key` (the untrained model's weights) lets a zero-shot pass reuse cached features.
    """
    device = method.device
    was_training = method.model.training
    method.model.eval()
    try:
        with torch.no_grad(), autocast_for_precision(inference.precision, device):
            features, valid = extract_features(
                method.encode_images, test_set, device, inference.batch_size, inference.workers, "evaluate", cache_key
            )
            classifier = method.classifier().float()
    finally:
        method.model.train(was_training)
    return accuracy_report(predict_labels(features, valid, classifier), test_set.labels, valid, method.info.classnames)


def accuracy_report(
    predictions: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, classnames: list[str]
) -> dict:
    """Top-1 over readable images, per-class accuracy keyed by class name, confusion rows = true class."""
    num_classes = len(classnames)
    pred, true = predictions[valid], labels[valid]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((true, pred), torch.ones_like(true), accumulate=True)
    per_class_total = confusion.sum(dim=1)
    per_class = {
        name: (confusion[c, c].item() / per_class_total[c].item()) if per_class_total[c] > 0 else None
        for c, name in enumerate(classnames)
    }
    total = int(valid.sum().item())
    return {
        "top1": (pred == true).float().mean().item() if total else 0.0,
        "n": total,
        "unreadable": int((~valid).sum().item()),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
