"""What a run without labels can say about itself: how its predictions spread over the classes and moved.

With no labelled images there is no accuracy; these numbers read no label and still show the usual
failures of label-free adaptation: collapse onto a few classes (top-class share, entropy), a model
that did not move (share changed from zero-shot, class-weight drift), or one that is unsure (margin).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

CHANGED_EXAMPLES = 24  # images whose class changed, listed for the report


def prediction_distribution(scores: torch.Tensor, valid: torch.Tensor, classnames: Sequence[str]) -> dict:
    """Counts per class, the share of the most predicted class, the entropy, and the mean top-1 vs top-2 margin.

    `scores` are cosine similarities [N, C]; the margin is in cosine units, the entropy in nats (and as a
    fraction of log C, so 1.0 means every class is predicted equally often).
    """
    rows = scores[valid].float()
    counts = (
        torch.bincount(rows.argmax(dim=-1), minlength=len(classnames))
        if len(rows)
        else torch.zeros(len(classnames), dtype=torch.long)
    )
    total = int(counts.sum())
    shares = counts.float() / max(total, 1)
    entropy = float(-(shares[shares > 0] * shares[shares > 0].log()).sum())
    margin = (
        float((rows.topk(2, dim=-1).values @ torch.tensor([1.0, -1.0])).mean())
        if len(rows) and rows.shape[1] > 1
        else 0.0
    )
    top = int(counts.argmax())
    return {
        "counts": {name: int(n) for name, n in zip(classnames, counts.tolist())},
        "top_class": classnames[top],
        "top_class_share": float(shares[top]),
        "entropy": entropy,
        "normalized_entropy": entropy / math.log(len(classnames)) if len(classnames) > 1 else 0.0,
        "mean_margin": margin,
    }


def label_free_diagnostics(
    zero_shot_scores: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    start_classifier: torch.Tensor,
    classifier: torch.Tensor,
    classnames: Sequence[str],
    paths: Sequence[str],
    seed: int,
) -> dict:
    """Zero-shot vs adapted predictions on every training image, and how far each class weight moved from its start."""
    zero_shot_pred, pred = zero_shot_scores.argmax(dim=-1), scores.argmax(dim=-1)
    changed = (zero_shot_pred != pred) & valid
    readable = int(valid.sum())
    drift = F.cosine_similarity(classifier.float().cpu(), start_classifier.float().cpu(), dim=-1)
    changed_indices = changed.nonzero().flatten().tolist()
    shown = sorted(random.Random(seed).sample(changed_indices, min(CHANGED_EXAMPLES, len(changed_indices))))
    return {
        "images": readable,
        "zero_shot": prediction_distribution(zero_shot_scores, valid, classnames),
        "adapted": prediction_distribution(scores, valid, classnames),
        "changed_from_zero_shot": float(changed.sum()) / max(readable, 1),
        # cosine of each class weight (LatteCLIP: its prototype) with its zero-shot start; 1.0 = did not move
        "class_weight_drift": {name: float(c) for name, c in zip(classnames, drift.tolist())},
        "mean_class_weight_drift": float(drift.mean()),
        "changed_examples": [
            {"image": paths[i], "zero_shot": classnames[int(zero_shot_pred[i])], "adapted": classnames[int(pred[i])]}
            for i in shown
        ],
    }
