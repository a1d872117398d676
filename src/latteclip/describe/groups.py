"""Which images share a collage with each anchor image (method.md 1.2, paper Tables 4 and 5).

Every draw returns, per anchor, the collage's cells (image indices in cell order). The default
draws use only zero-shot pseudo-labels:
- "class" (the authors' runs): `group_size` random images of the anchor's zero-shot class; the
  anchor need not be among them. Training then reads, at each visit of an image, the group of a
  random image of its class, so a group describes its class rather than one image.
- "anchor" (the paper's text): the anchor plus `group_size - 1` others of its class.
`draw_true_class_groups` is the paper's analysis that reads the TRUE labels (k of the group's
images from the anchor's true class); nothing in training may depend on it.

Each anchor has its own generator seeded by (seed, anchor position), so a group never depends on
the order in which groups are drawn or on which were drawn before: a resumed run redraws the
same groups and finds their answers in the store.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence


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


GROUP_DRAWS = ("class", "anchor")


def draw_pseudo_label_groups(
    labels: Sequence[int], group_size: int, seed: int, draw: str = "class"
) -> list[list[int] | None]:
    """For each anchor, the cells of its collage, drawn among the images with its zero-shot label.

    Labels of -1 (unreadable images) have no group and are never drawn as members.
    """
    if group_size < 1:
        raise ValueError("a group holds at least one image")
    if draw not in GROUP_DRAWS:
        raise ValueError(f"group draw must be one of {', '.join(GROUP_DRAWS)}, not {draw!r}")
    by_label = _by_label(labels)
    groups: list[list[int] | None] = []
    for anchor, label in enumerate(labels):
        if label < 0:
            groups.append(None)
        elif draw == "class":
            pool = by_label[label]
            rng = random.Random(f"{seed}:class:{anchor}")
            groups.append(rng.sample(pool, group_size) if len(pool) >= group_size else rng.choices(pool, k=group_size))
        else:
            groups.append(
                [anchor, *_draw(by_label[label], group_size - 1, anchor, True, random.Random(f"{seed}:{anchor}"))]
            )
    return groups


def draw_true_class_groups(
    true_labels: Sequence[int], group_size: int, same_class: int, seed: int
) -> list[list[int] | None]:
    """ANALYSIS ONLY (reads true labels): groups with `same_class` images of the anchor's true class
    (the anchor included, in the first cell) and the rest from other classes, the others in random cells."""
    if not 1 <= same_class <= group_size:
        raise ValueError(f"the anchor's class can fill 1 to {group_size} places of a group, not {same_class}")
    by_label = _by_label(true_labels)
    other_classes = {
        label: [i for other, items in by_label.items() if other != label for i in items] for label in by_label
    }
    groups: list[list[int] | None] = []
    for anchor, label in enumerate(true_labels):
        if label < 0:
            groups.append(None)
            continue
        rng = random.Random(f"{seed}:true:{anchor}")
        members = _draw(by_label[label], same_class - 1, anchor, True, rng)
        members += _draw(other_classes[label], group_size - same_class, anchor, False, rng)
        rng.shuffle(members)
        groups.append([anchor, *members])
    return groups
