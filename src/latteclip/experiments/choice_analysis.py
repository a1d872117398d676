"""How well each label-free score would have chosen an entry's options, against the choice made with held-out labels.

Analysis only: it reads the held-out top-1 of every candidate (the held-out images' labels) and the test top-1 of
every candidate run on the target (the benchmark's `--choice-analysis`), to measure the label-free scores; nothing it
computes chooses anything for a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from latteclip.engine.choice import first_best

Choice = dict[str, Any]  # one record of ExperimentRuns.choices: shift, entry, label, chosen, scores (the candidates)


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank (what Spearman's correlation compares)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in order[start : end + 1]:
            result[position] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on tie-averaged ranks); None when either side is constant."""
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / (sxx * syy) ** 0.5


def best_by(candidates: Sequence[dict[str, Any]], score: str) -> dict[str, Any]:
    """The candidate a score picks (the highest; a tie goes to the earlier candidate, as the runner picks)."""
    return candidates[first_best([c["label_free"][score] for c in candidates])]


@dataclass(frozen=True)
class ScoreRow:
    """One label-free score over every (entry, shifted domain) choice; regrets are points of top-1 lost against the
    candidate chosen with held-out labels (0 when the score picks it)."""

    score: str
    heldout_regret: list[float]
    test_regret: list[float]  # empty when the candidates' test runs are missing
    same_pick: int
    correlations: list[float]  # per choice where both sides vary
    choices: int
    worst_where: str  # the (entry, shift) of the largest test (else held-out) regret


def score_row(score: str, choices: Sequence[Choice]) -> ScoreRow:
    heldout, test, same, correlations, worst, where = [], [], 0, [], -1.0, ""
    for choice in choices:
        candidates = choice["scores"]
        labelled = next(c for c in candidates if c["choice"] == choice["chosen"])
        picked = best_by(candidates, score)
        same += picked is labelled
        heldout.append(100 * (labelled["heldout_top1"] - picked["heldout_top1"]))
        if all("test_top1" in c for c in candidates):
            test.append(100 * (labelled["test_top1"] - picked["test_top1"]))
        lost = test[-1] if len(test) == len(heldout) else heldout[-1]
        if lost > worst:
            worst, where = lost, f"{choice['label']} on {choice['shift']}"
        rho = spearman([c["label_free"][score] for c in candidates], [c["heldout_top1"] for c in candidates])
        if rho is not None:
            correlations.append(rho)
    return ScoreRow(score, heldout, test if len(test) == len(heldout) else [], same, correlations, len(choices), where)


def scores_measured(choices: Sequence[Choice]) -> list[str]:
    """The scores every candidate of every choice has (the agreement with the describer only where it described)."""
    common: set[str] | None = None
    for choice in choices:
        for candidate in choice["scores"]:
            names = set(candidate.get("label_free", {}))
            common = names if common is None else common & names
    return sorted(common or ())


def lowest_heldout_regret(rows: Sequence[ScoreRow]) -> ScoreRow:
    """The score with the lowest mean held-out regret (then the lowest worst case): never chosen on test."""
    return min(rows, key=lambda r: (sum(r.heldout_regret) / len(r.heldout_regret), max(r.heldout_regret), r.score))
