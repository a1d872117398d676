"""The pseudo-label analysis: an observer of the training loop that READS THE TRUE LABELS of each batch.

It runs only on labelled datasets, writes `analysis/*` metrics into metrics.jsonl, and nothing it
computes goes back to training: the loop hands it each step's result after the step is taken.
"""

from __future__ import annotations

from latteclip.methods.base import StepResult


class PseudoLabelAnalysis:
    """How right the labels a method trained on were, and how right its clean/noisy judgement of them was."""

    reads_labels = True

    def record(self, batch: dict, result: StepResult) -> dict[str, float]:
        if result.pseudo_labels is None:
            return {}
        correct = result.pseudo_labels == batch["label"]
        record = {"analysis/pseudo_label_acc": correct.float().mean().item()}
        if result.kept is not None:  # is "clean" said of the right labels, and how right are the kept ones
            record["analysis/clean_judgement_acc"] = (result.kept == correct).float().mean().item()
            if bool(result.kept.any()):
                record["analysis/kept_label_acc"] = correct[result.kept].float().mean().item()
        return record
