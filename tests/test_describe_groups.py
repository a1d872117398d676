"""Group draws: cells share the anchor's zero-shot label, seeded, with replacement for small classes;
the authors' class draw need not hold the anchor; the true-label analysis draw holds exactly K images of the anchor's
class."""

from __future__ import annotations

from collections import Counter

import pytest

from latteclip.describe.groups import draw_pseudo_label_groups, draw_true_class_groups

LABELS = [0, 0, 0, 0, 0, 1, 1, 2, -1]


def test_anchor_draw_holds_the_anchor_first_and_distinct_members_of_its_label():
    groups = draw_pseudo_label_groups(LABELS, 4, seed=0, draw="anchor")
    for anchor in range(5):
        cells = groups[anchor]
        assert len(cells) == 4 and len(set(cells)) == 4 and cells[0] == anchor
        assert all(LABELS[m] == 0 for m in cells)


def test_anchor_draw_small_classes_are_drawn_with_replacement():
    groups = draw_pseudo_label_groups(LABELS, 4, seed=0, draw="anchor")
    assert groups[5] == [5, 6, 6, 6] and groups[6] == [6, 5, 5, 5]  # class 1 has one other image
    assert groups[7] == [7, 7, 7, 7]  # class 2 has only the anchor
    assert groups[8] is None  # unreadable images have no group...
    assert all(8 not in g for g in groups if g)  # ...and are never members


def test_class_draw_is_random_images_of_the_class_with_or_without_the_anchor():
    labels = [i % 2 for i in range(40)]  # two classes of 20
    groups = draw_pseudo_label_groups(labels, 4, seed=0)  # the authors' draw is the default
    assert all(len(set(cells)) == 4 and {labels[c] for c in cells} == {labels[a]} for a, cells in enumerate(groups))
    holding_anchor = sum(a in cells for a, cells in enumerate(groups))
    assert 0 < holding_anchor < 20  # each holds its anchor with probability 4/20: about 8 of 40
    small = draw_pseudo_label_groups(LABELS, 4, seed=0)
    assert small[7] == [7, 7, 7, 7] and sorted(set(small[5])) == [5, 6] and small[8] is None


@pytest.mark.parametrize("draw", ["class", "anchor"])
def test_draw_is_seeded_and_per_anchor(draw):
    labels = [i % 3 for i in range(300)]
    first = draw_pseudo_label_groups(labels, 8, seed=3, draw=draw)
    assert first == draw_pseudo_label_groups(labels, 8, seed=3, draw=draw)
    assert first != draw_pseudo_label_groups(labels, 8, seed=4, draw=draw)
    # every image of a class has a fair chance to be drawn: over 100 anchors x 8 cells none is left out
    used = Counter(m for g in first if g for m in g)
    assert set(used) == set(range(300))


@pytest.mark.parametrize("same", [1, 2, 4])
def test_true_class_analysis_groups_hold_k_images_of_the_class(same):
    true_labels = [i // 6 for i in range(60)]  # 10 classes of 6
    groups = draw_true_class_groups(true_labels, 4, same, seed=0)
    for anchor, cells in enumerate(groups):
        assert len(cells) == 4 and cells[0] == anchor and anchor not in cells[1:]
        assert sum(true_labels[m] == true_labels[anchor] for m in cells) == same


def test_true_class_count_out_of_range():
    with pytest.raises(ValueError):
        draw_true_class_groups([0, 1], 4, 5, seed=0)
