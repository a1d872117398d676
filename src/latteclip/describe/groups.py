"""Which images share a collage with each anchor image (method.md 1.2, paper Tables 4 and 5).

The default draw uses only zero-shot pseudo-labels: the other members share the anchor's c_zs.
`draw_true_class_groups` is the paper's analysis that reads the TRUE labels (k of the group's
images from the anchor's true class); nothing in training may depend on it.

Each anchor has its own generator seeded by (seed, anchor position), so a group never depends on
the order in which groups are drawn or on which were drawn before: a resumed run redraws the
same groups and finds their answers in the store.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence


def _by_label(labels: Sequence[int]) -> dict[int, list[int]]:
    members: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        if label >= 0:
            members[label].append(index)
    return members


def _draw(pool: list[int], count: int, anchor: int, holds_anchor: bool, rng: random.Random) -> list[int]:
    """`count` members of `pool` other than `anchor`: distinct when there are enough, with replacement
    when there are fewer, the anchor itself when there is nothing else."""
    if count <= 0:
        return []
    available = len(pool) - holds_anchor
    if available >= count:
        if not holds_anchor:
            return rng.sample(pool, count)
        picks = rng.sample(pool, count + 1)  # one spare, so dropping the anchor leaves a uniform draw
        if anchor in picks:
            picks.remove(anchor)
        else:
            picks.pop()
        return picks
    if available == 0:
        return [anchor] * count
    return rng.choices([i for i in pool if i != anchor], k=count)


def draw_pseudo_label_groups(labels: Sequence[int], group_size: int, seed: int) -> list[list[int] | None]:
    """For each anchor, the `group_size - 1` other members drawn among images with its label.

    Labels of -1 (unreadable images) have no group and are never drawn as members.
    """
    if group_size < 1:
        raise ValueError("a group holds at least its anchor")
    by_label = _by_label(labels)
    groups: list[list[int] | None] = []
    for anchor, label in enumerate(labels):
        if label < 0:
            groups.append(None)
            continue
        groups.append(_draw(by_label[label], group_size - 1, anchor, True, random.Random(f"{seed}:{anchor}")))
    return groups


def draw_true_class_groups(
    true_labels: Sequence[int], group_size: int, same_class: int, seed: int
) -> list[list[int] | None]:
    """ANALYSIS ONLY (reads true labels): groups with `same_class` images of the anchor's true class
    (the anchor included) and the rest from other classes, the members in random cells."""
    if not 1 <= same_class <= group_size:
        raise ValueError(f"the anchor's class can fill 1 to {group_size} places of a group, not {same_class}")
    by_label = _by_label(true_labels)
    other_classes = {label: [i for other, items in by_label.items() if other != label for i in items] for label in by_label}
    groups: list[list[int] | None] = []
    for anchor, label in enumerate(true_labels):
        if label < 0:
            groups.append(None)
            continue
        rng = random.Random(f"{seed}:true:{anchor}")
        members = _draw(by_label[label], same_class - 1, anchor, True, rng)
        members += _draw(other_classes[label], group_size - same_class, anchor, False, rng)
        rng.shuffle(members)
        groups.append(members)
    return groups
