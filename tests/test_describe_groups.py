"""Group draws: members share the anchor's zero-shot label, seeded, with replacement for small classes;
the true-label analysis draw holds exactly K images of the anchor's class."""

from __future__ import annotations

from collections import Counter

import pytest

from latteclip.describe.groups import draw_pseudo_label_groups, draw_true_class_groups

LABELS = [0, 0, 0, 0, 0, 1, 1, 2, -1]


def test_members_share_the_label_and_are_distinct_when_the_class_is_large():
    groups = draw_pseudo_label_groups(LABELS, 4, seed=0)
    for anchor in range(5):
        members = groups[anchor]
        assert len(members) == 3 and len(set(members)) == 3
        assert anchor not in members and all(LABELS[m] == 0 for m in members)


def test_small_classes_are_drawn_with_replacement():
    groups = draw_pseudo_label_groups(LABELS, 4, seed=0)
    assert groups[5] == [6, 6, 6] and groups[6] == [5, 5, 5]  # class 1 has one other image
    assert groups[7] == [7, 7, 7]  # class 2 has only the anchor
    assert groups[8] is None  # unreadable images have no group...
    assert all(8 not in g for g in groups if g)  # ...and are never members


def test_draw_is_seeded_and_per_anchor():
    labels = [i % 3 for i in range(300)]
    first = draw_pseudo_label_groups(labels, 8, seed=3)
    assert first == draw_pseudo_label_groups(labels, 8, seed=3)
    assert first != draw_pseudo_label_groups(labels, 8, seed=4)
    # every image of a class has a fair chance to be drawn: over 100 anchors x 7 members none is left out
    used = Counter(m for g in first if g for m in g)
    assert set(used) == set(range(300))


@pytest.mark.parametrize("same", [1, 2, 4])
def test_true_class_analysis_groups_hold_k_images_of_the_class(same):
    true_labels = [i // 6 for i in range(60)]  # 10 classes of 6
    groups = draw_true_class_groups(true_labels, 4, same, seed=0)
    for anchor, members in enumerate(groups):
        assert len(members) == 3 and anchor not in members
        in_class = sum(true_labels[m] == true_labels[anchor] for m in members) + 1
        assert in_class == same


def test_true_class_count_out_of_range():
    with pytest.raises(ValueError):
        draw_true_class_groups([0, 1], 4, 5, seed=0)
