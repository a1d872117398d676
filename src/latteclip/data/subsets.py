"""How samples are drawn where no split file says: the fixed-seed fallback split and `--limit` subsets.

No training split depends on the seed of a run or, under `--limit`, on labels: the fallback 50/20/30 split has
a fixed seed, `--limit` takes a seeded uniform subset of a training split (class-balanced subsets only for
evaluation splits), and `--train-fraction` a seeded share of the training split alone.
"""

from __future__ import annotations

import random
from collections import defaultdict

from latteclip.data.datasets import Sample

FALLBACK_SPLIT_SEED = 0  # the 50/20/30 split of datasets without a split file: the same split for every --seed
FALLBACK_SPLIT = f"seeded 50/20/30 (fixed seed {FALLBACK_SPLIT_SEED})"


def stratified_subset(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """A seeded subset of `limit` samples that takes classes in turn, so every class is present."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    queues = []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        queues.append(items)
    chosen: list[Sample] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen, key=lambda s: (s.label, s.path))


def uniform_subset(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """A seeded subset of `limit` samples drawn by position only (labels unread), in their original order."""
    if limit >= len(samples):
        return list(samples)
    chosen = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in chosen]


def training_share(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """A seeded `fraction` of the training samples (at least one), drawn by position only (labels unread), in their
    original order. One seeded order of all positions is cut at the share, so a smaller share of the same seed is part
    of a larger one (the points of the paper's Figure 6 add data, they do not redraw it)."""
    if fraction >= 1.0:
        return list(samples)
    order = list(range(len(samples)))
    random.Random(f"train-fraction-{seed}").shuffle(order)
    return [samples[i] for i in sorted(order[: share_count(len(samples), fraction)])]


def share_count(count: int, fraction: float) -> int:
    """How many of `count` training images a share keeps: the nearest whole number, at least one."""
    return count if fraction >= 1.0 else max(1, round(fraction * count))


def held_back_positions(count: int, share: float, seed: int) -> list[int]:
    """Positions of a seeded `share` of `count` training images, drawn by position only (no label read), sorted.

    At least one image is held back and at least one kept, so both the training and the scoring have images.
    """
    held = min(max(1, round(share * count)), count - 1)
    return sorted(random.Random(f"holdout-{seed}").sample(range(count), held))


def seeded_split(by_class: dict[int, list[str]]) -> dict[str, list[Sample]]:
    """Per class: shuffle with the fixed split seed, then 50% train, 20% val, 30% test.

    The seed is not the run's: runs with other seeds must train and test on the same images.
    """
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        random.Random(f"{FALLBACK_SPLIT_SEED}-{label}").shuffle(paths)
        n_train = round(0.5 * len(paths))
        n_val = round(0.2 * len(paths))
        parts["train"] += [Sample(p, label) for p in paths[:n_train]]
        parts["val"] += [Sample(p, label) for p in paths[n_train : n_train + n_val]]
        parts["test"] += [Sample(p, label) for p in paths[n_train + n_val :]]
    return parts
