"""Label-free validation scores: how good an adapted model looks on unlabeled target images.

Choosing a learning rate or a step budget needs a number to compare candidates by, and the practitioner has no
labels. Each function below is one published unsupervised-validation score, computed from a candidate's class
probabilities on images it did not train on; every score is oriented so that HIGHER IS BETTER. None is reliable on
every domain (which is why `benchmarks/` measures them against held-out labels), so they are kept small and separate.

`probs` is always [N, C] (rows sum to 1): softmax of the candidate's logits (logit scale times cosine).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import torch

from latteclip.engine.score_names import COMBINED

SND_TEMPERATURE = 0.05  # Saito et al.'s value: sharp enough that only a sample's near neighbours count
MIXVAL_RATIO = 0.55  # Hu et al.'s mixing weight: the first image dominates, barely, so the boundary is probed


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row (0 log 0 = 0)."""
    logs = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    return -(probs * logs).sum(dim=-1)


def prediction_balance(probs: torch.Tensor) -> float:
    """Minus the share of images given to the most predicted class.

    The rule of thumb against collapse, the usual failure of self-training on pseudo-labels: the candidate whose
    predictions are least concentrated on one class wins. Ties between predictions count for the lower class index.
    """
    counts = torch.bincount(probs.argmax(dim=-1), minlength=probs.shape[1])
    return -float(counts.max()) / max(int(counts.sum()), 1)


def neg_entropy(probs: torch.Tensor) -> float:
    """Minus the mean prediction entropy (Morerio et al., ICLR 2018, "Minimal-entropy correlation alignment"):
    a model that has adapted to the domain should be confident on it."""
    return -float(_entropy(probs.double()).mean())


def information_maximization(probs: torch.Tensor) -> float:
    """Entropy of the mean prediction minus the mean entropy (Shi & Sha, ICML 2012; SHOT, Liang et al., ICML 2020).

    High when every prediction is confident AND the classes are used evenly, so it does not reward collapse as
    plain entropy does.
    """
    probs = probs.double()
    return float(_entropy(probs.mean(dim=0)) - _entropy(probs).mean())


def soft_neighborhood_density(probs: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """SND (Saito et al., ICCV 2021, "Tune it the right way"): the mean entropy of each sample's soft neighbourhood.

    Rows are L2-normalised, each sample's similarities to the OTHER samples go through a softmax at `temperature`,
    and the entropy of that distribution is averaged: a model whose target outputs form dense clusters (many close
    neighbours) scores high.
    """
    rows = torch.nn.functional.normalize(probs.double(), dim=-1)
    similarity = rows @ rows.T
    similarity.fill_diagonal_(float("-inf"))  # a sample is not its own neighbour
    neighbours = torch.softmax(similarity / temperature, dim=-1)
    return float(_entropy(neighbours).mean())


def agreement(probs: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of images whose predicted class equals a reference model's (the zero-shot model, or the describer's
    answers mapped to classes); entries of `reference` below 0 (no answer) are left out."""
    answered = reference >= 0
    if not bool(answered.any()):
        return 0.0
    return float((probs.argmax(dim=-1)[answered] == reference[answered]).double().mean())


def with_combined(scores: Mapping[str, float]) -> dict[str, float]:
    """`scores` plus each combined score of COMBINED whose parts are there: the sum of its parts.

    Prediction balance plus agreement with the describer: the balance alone cannot tell a candidate that spreads
    its errors evenly from a correct one, and the agreement alone rewards copying the describer's own skew; the sum
    asks for both. Computed when scores are read, so a run scored before a combination existed has it too. Fixed
    (equal weights, no fitted constant) before it was measured on any test split: benchmarks/domain_shift.py measures
    it beside the others.
    """
    combined = dict(scores)
    for name, parts in COMBINED.items():
        if all(part in scores for part in parts):
            combined[name] = sum(scores[part] for part in parts)
    return combined


def mixval(
    images: torch.Tensor,
    probs: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
    pairs: int = 256,
    ratio: float = MIXVAL_RATIO,
) -> dict[str, float]:
    """MixVal (Hu et al., NeurIPS 2023, "Mixed samples as probes for unsupervised model selection").

    Pairs of target images are mixed in input space, `ratio` * x_i + (1 - ratio) * x_j, and the candidate's class for
    the mix is compared with its own pseudo-label of the dominant image x_i. Inter-cluster pairs (different
    pseudo-labels) probe where the decision boundary lies, intra-cluster pairs (same pseudo-label) how firm a class
    is. The paper combines the two by their ranks over the candidates; to give each candidate a score of its own, the
    mean of the two accuracies is reported as `mixval`. A candidate with a single predicted class has no boundary to
    probe: its inter-cluster accuracy is 0, so collapse is never rewarded.

    `predict` maps a batch of images to class probabilities [B, C]; `pairs` of each kind are drawn with `seed`.
    """
    labels = probs.argmax(dim=-1)
    result = {}
    for kind, pair_list in mixing_pairs(labels, pairs, seed).items():
        if not pair_list:
            result[kind] = 0.0
            continue
        first, second = (torch.tensor(side) for side in zip(*pair_list))
        mixed = ratio * images[first] + (1 - ratio) * images[second]
        result[kind] = float((predict(mixed).argmax(dim=-1) == labels[first]).double().mean())
    return {
        "mixval": (result["inter"] + result["intra"]) / 2,
        "mixval_inter": result["inter"],
        "mixval_intra": result["intra"],
    }


def mixing_pairs(labels: torch.Tensor, pairs: int, seed: int) -> dict[str, list[tuple[int, int]]]:
    """Up to `pairs` (dominant, other) index pairs with different labels ("inter") and with the same label ("intra")."""
    rng = random.Random(seed)
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(index)
    classes = sorted(members)
    drawn: dict[str, list[tuple[int, int]]] = {"inter": [], "intra": []}
    if len(classes) > 1:
        for _ in range(pairs):
            a, b = rng.sample(classes, 2)
            drawn["inter"].append((rng.choice(members[a]), rng.choice(members[b])))
    crowded = [c for c in classes if len(members[c]) > 1]
    if crowded:
        for _ in range(pairs):
            first, second = rng.sample(members[rng.choice(crowded)], 2)
            drawn["intra"].append((first, second))
    return drawn
