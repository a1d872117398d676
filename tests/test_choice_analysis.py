"""How the benchmark measures a label-free score's choices against the held-out labels' (hand-computed cases)."""

from __future__ import annotations

import pytest

from latteclip.experiments.choice_analysis import lowest_heldout_regret, ranks, score_row, spearman


def test_ranks_share_ties_and_spearman_is_pearson_on_ranks():
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)  # 1 - 6 * (0 + 1 + 1) / (3 * 8)
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # a constant score ranks nothing


def candidate(lr: float, heldout: float, test: float, balance: float, entropy: float) -> dict:
    return {
        "choice": {"lr": lr},
        "heldout_top1": heldout,
        "test_top1": test,
        "label_free": {"balance": balance, "entropy": entropy},
    }


# (shift, the labels' pick): per candidate (lr, held-out top-1, test top-1, balance, entropy)
# tint: balance picks the labels' lr 1e-5, entropy picks 1e-4 (2 held-out points and 3 test points lost)
# rotation: the labels pick 1e-4; balance ties 1e-6 and 1e-4 and takes the earlier (10 held-out, 12 test points lost)
TABLE = {
    ("tint", 1e-5): [(1e-6, 0.40, 0.41, -0.5, -1.0), (1e-5, 0.50, 0.52, -0.1, -0.9), (1e-4, 0.48, 0.49, -0.3, -0.2)],
    ("rotation", 1e-4): [
        (1e-6, 0.30, 0.28, -0.2, -0.8),
        (1e-5, 0.35, 0.36, -0.4, -0.1),
        (1e-4, 0.40, 0.40, -0.2, -0.5),
    ],
}
CHOICES = [
    {
        "shift": shift,
        "entry": "latteclip",
        "label": "LatteCLIP",
        "chosen": {"lr": lr},
        "scores": [candidate(*r) for r in rows],
    }
    for (shift, lr), rows in TABLE.items()
]


def test_a_score_row_counts_regret_same_picks_and_rank_correlation():
    balance = score_row("balance", CHOICES)
    assert balance.heldout_regret == pytest.approx([0.0, 10.0])
    assert balance.test_regret == pytest.approx([0.0, 12.0])
    assert balance.same_pick == 1 and balance.worst_where == "LatteCLIP on rotation"
    # tint: balance ranks 1,3,2 against held-out 1,3,2 -> 1; rotation: ranks 2.5,1,2.5 against 1,2,3 -> 0
    assert balance.correlations == pytest.approx([1.0, 0.0])
    entropy = score_row("entropy", CHOICES)
    assert entropy.heldout_regret == pytest.approx([2.0, 5.0]) and entropy.test_regret == pytest.approx([3.0, 4.0])
    assert entropy.same_pick == 0
    assert lowest_heldout_regret([balance, entropy]).score == "entropy"  # mean 3.5 against 5.0


def test_without_every_candidates_test_run_there_is_no_test_regret():
    without_test = [{k: v for k, v in c.items() if k != "test_top1"} for c in CHOICES[0]["scores"]]
    partial = [dict(CHOICES[0], scores=without_test)]
    assert score_row("balance", partial).test_regret == []
