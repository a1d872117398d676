"""Label-free validation scores on examples small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch

from latteclip.engine import validation

# four images, two classes: two sure of class 0, one sure of class 1, one undecided (argmax: class 0)
FOUR = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])


def test_prediction_balance_is_minus_the_top_class_share():
    assert validation.prediction_balance(FOUR) == -0.75


def test_neg_entropy_averages_the_row_entropies():
    assert validation.neg_entropy(FOUR) == pytest.approx(-math.log(2) / 4)


def test_information_maximization_by_hand():
    mean = (0.625, 0.375)
    entropy_of_mean = -sum(p * math.log(p) for p in mean)
    assert validation.information_maximization(FOUR) == pytest.approx(entropy_of_mean - math.log(2) / 4)
    # a collapsed model is as confident but uses one class: IM is 0, while plain entropy calls it perfect
    collapsed = torch.tensor([[1.0, 0.0]] * 4)
    assert validation.information_maximization(collapsed) == pytest.approx(0.0)
    assert validation.neg_entropy(collapsed) == pytest.approx(0.0)


def test_snd_by_hand():
    # two identical pairs: each sample has one neighbour at cosine 1 and two at cosine 0
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    e = math.e
    expected = math.log(e + 2) - e / (e + 2)  # entropy of softmax([1, 0, 0]) at temperature 1
    assert validation.soft_neighborhood_density(rows, temperature=1.0) == pytest.approx(expected)
    # the sample itself never counts: with it, the softmax would have four entries
    assert validation.soft_neighborhood_density(rows, temperature=1.0) != pytest.approx(
        math.log(2 * e + 2) - 2 * e / (2 * e + 2)
    )


def test_snd_prefers_dense_clusters_to_scattered_outputs():
    clustered = torch.tensor([[0.9, 0.1]] * 4 + [[0.1, 0.9]] * 4)
    scattered = torch.softmax(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)) * 3, dim=-1)
    assert validation.soft_neighborhood_density(clustered) > validation.soft_neighborhood_density(scattered)


def test_agreement_leaves_out_unanswered_images():
    reference = torch.tensor([-1, 0, 1, 1])  # the first image got no answer
    assert validation.agreement(FOUR, reference) == pytest.approx(2 / 3)
    assert validation.agreement(FOUR, torch.tensor([-1, -1, -1, -1])) == 0.0


def test_balance_plus_describer_agreement_is_their_sum_where_both_are():
    balance = validation.prediction_balance(FOUR)  # three of four images in class 0: -0.75
    agree = validation.agreement(FOUR, torch.tensor([-1, 0, 1, 1]))  # 2 of the 3 answered: 2/3
    combined = validation.with_combined({"prediction_balance": balance, "describer_agreement": agree})
    assert combined["balance_plus_describer_agreement"] == pytest.approx(-0.75 + 2 / 3)
    # a collapsed candidate (every image in class 0) that agrees as often scores lower: -1 + 2/3
    collapsed = torch.tensor([[1.0, 0.0]] * 4)
    parts = {"prediction_balance": validation.prediction_balance(collapsed), "describer_agreement": 2 / 3}
    assert validation.with_combined(parts)["balance_plus_describer_agreement"] == pytest.approx(-1 / 3)
    assert "balance_plus_describer_agreement" not in validation.with_combined({"prediction_balance": balance})


def _threshold_model(boundary: float):
    """Class 1 right of `boundary` on 1-D 'images'."""

    def predict(images: torch.Tensor) -> torch.Tensor:
        x = images.flatten()
        return torch.softmax(torch.stack([boundary - x, x - boundary], dim=-1) * 10, dim=-1)

    return predict


def test_mixval_scores_a_collapsed_model_below_a_correct_one():
    images = torch.tensor([[-1.0], [-1.0], [-0.9], [0.9], [1.0], [1.0]])
    correct, collapsed = _threshold_model(0.0), _threshold_model(5.0)
    right = validation.mixval(images, correct(images), correct, seed=0, pairs=64)
    # every mix 0.55 * a + 0.45 * b of the two clusters stays on a's side of 0: the correct model gets all of them
    assert right == {"mixval": 1.0, "mixval_inter": 1.0, "mixval_intra": 1.0}
    wrong = validation.mixval(images, collapsed(images), collapsed, seed=0, pairs=64)
    # one predicted class: no boundary to probe (inter 0), every same-class mix agrees (intra 1)
    assert wrong == {"mixval": 0.5, "mixval_inter": 0.0, "mixval_intra": 1.0}


def test_mixval_finds_a_misplaced_boundary():
    images = torch.tensor([[-1.0], [-1.0], [1.0], [1.0]])
    shifted = _threshold_model(-0.5)  # labels the images right, but mixes -0.1 of class 0 fall on class 1's side
    scores = validation.mixval(images, shifted(images), shifted, seed=0, pairs=200)
    # a dominant class-0 image mixed with a class-1 image lands at -0.1, right of -0.5: half the inter pairs fail
    assert 0.35 < scores["mixval_inter"] < 0.65
    assert scores["mixval_intra"] == 1.0


def test_mixing_pairs_are_seeded_and_of_the_right_kind():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    pairs = validation.mixing_pairs(labels, 50, seed=3)
    assert pairs == validation.mixing_pairs(labels, 50, seed=3)
    assert all(labels[a] != labels[b] for a, b in pairs["inter"])
    assert all(labels[a] == labels[b] and a != b for a, b in pairs["intra"])
    assert len(pairs["inter"]) == len(pairs["intra"]) == 50
