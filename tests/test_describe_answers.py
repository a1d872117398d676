"""LMM zero-shot answer mapping: exact, case-insensitive, closest by similarity, unmapped; ratios by hand."""

from __future__ import annotations

import pytest

from latteclip.describe.answers import map_answer, mapping_counts, similarity

EUROSAT = [
    "annual crop land",
    "forest",
    "brushland or shrubland",
    "highway or road",
    "industrial buildings or commercial buildings",
    "pasture land",
    "permanent crop land",
    "residential buildings or homes or apartments",
    "river",
    "lake or sea",
]


def test_exact_and_case_insensitive():
    assert map_answer("forest", EUROSAT).how == "exact" and map_answer("forest", EUROSAT).label == 1
    answer = map_answer("  Lake or Sea.", EUROSAT)
    assert (answer.label, answer.how) == (9, "case_insensitive")
    assert map_answer('"RIVER"', EUROSAT).label == 8


def test_similarity_uses_the_alternatives_of_a_name():
    # difflib ratio = 2 * matches / (len(a) + len(b)): "industrial" vs "industrial buildings" = 20 / 30
    assert similarity("industrial", "industrial buildings or commercial buildings") == pytest.approx(2 / 3)
    assert similarity("highway", "highway or road") == 1.0
    answer = map_answer("Industrial", EUROSAT)
    assert (answer.label, answer.how) == (4, "similar")
    assert answer.similarity == pytest.approx(2 / 3)
    # "annual crop" vs "annual crop land": 2 * 11 / (11 + 16)
    assert map_answer("annual crop", EUROSAT).similarity == pytest.approx(22 / 27)


@pytest.mark.parametrize("answer", ["", "I cannot tell.", "banana", "the image shows a forest"])
def test_answers_naming_no_class_are_unmapped(answer):
    mapped = map_answer(answer, EUROSAT)
    assert mapped.label is None and mapped.how == "unmapped"


def test_cutoff_decides_the_similar_step():
    # "farmland" vs "pasture land": 2 * 6 / (8 + 12) = 0.6
    assert map_answer("farmland", EUROSAT).label == 5
    assert map_answer("farmland", EUROSAT, cutoff=0.61).label is None


def test_counts_and_unmapped_share():
    mapped = [map_answer(a, EUROSAT) for a in ["forest", "Forest", "highway", "no idea at all", ""]]
    counts = mapping_counts(mapped)
    assert counts == {"exact": 1, "case_insensitive": 1, "similar": 1, "unmapped": 2, "unmapped_share": 0.4}
