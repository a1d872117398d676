"""Accuracy of a classifier on a labelled split: top-1, per class, confusion matrix."""

from __future__ import annotations

import torch


def accuracy_report(predictions: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, classnames: list[str]) -> dict:
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
