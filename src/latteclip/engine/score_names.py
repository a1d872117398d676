"""The label-free scores' names and the default, apart from their torch code so that `--help` lists them cheaply.

The default: of the scores benchmarks/domain_shift.py --choice-analysis measures, the one with the lowest mean regret
against the pick of the held-out labels (docs/results.md, "Label-free choice"); without a describer, the lowest of
those that need none.
"""

from __future__ import annotations

AGREEMENT_SCORES = ("zero_shot_agreement", "describer_agreement")  # zero-shot agrees with itself: never compared
COMBINED = {"balance_plus_describer_agreement": ("prediction_balance", "describer_agreement")}  # sums of scores
SCORE_NAMES = (  # a candidate's scores (engine.choice.scores_of, then the combined ones)
    "prediction_balance",
    "neg_entropy",
    "information_maximization",
    "soft_neighborhood_density",
    "mixval",
    "mixval_inter",
    "mixval_intra",
    *AGREEMENT_SCORES,
    *COMBINED,
)
DEFAULT_SCORE = "balance_plus_describer_agreement"
DEFAULT_SCORE_UNDESCRIBED = "prediction_balance"


def needs_describer(score: str) -> bool:
    """Whether a score exists only where the describer read the held-back images."""
    return "describer_agreement" in (score, *COMBINED.get(score, ()))


def default_score(described: bool) -> str:
    """The score `adapt` chooses by unless told: the describer's agreement is part of it only where one described."""
    return DEFAULT_SCORE if described else DEFAULT_SCORE_UNDESCRIBED


def compared_with_zero_shot(score: str) -> str | None:
    """The score by which the verdict asks whether any candidate beats zero-shot, when choosing by `score`: never an
    agreement (zero-shot agrees with itself, and an offline describer is often zero-shot's own CLIP), so a
    combination is compared by its one other part, and an agreement by nothing (None)."""
    if score in AGREEMENT_SCORES:
        return None
    rest = [part for part in COMBINED.get(score, (score,)) if part not in AGREEMENT_SCORES]
    return rest[0] if len(rest) == 1 else None
