"""Assemble the report of one run (compared with the other runs named) into a folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latteclip.errors import LatteclipError
from latteclip.report import label_free, sections
from latteclip.report.html import page
from latteclip.report.runs import compare, load_run

REPORT_FILE = "report.html"


def write_report(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    verdict: Mapping[str, Any] | None = None,
    choice: Mapping[str, Any] | None = None,
) -> Path:
    """report.html plus the PNGs it embeds, in `out` (default: the subject run's `report/` folder); `adapt`'s verdict
    and label-free choice (engine.choice) go at the top."""
    comparison = compare([load_run(d) for d in run_dirs])
    subject = comparison.subject
    folder = Path(out) if out else subject.folder / "report"
    if folder.exists() and not folder.is_dir():
        raise LatteclipError(f"--out {folder} is a file: pass a folder")
    folder.mkdir(parents=True, exist_ok=True)
    shown = {sections.AGREEMENT_KEY, sections.PSEUDO_LABEL_ACC_KEY, *sections.MIXER_KEYS.values()}
    if subject.labelled:
        measured = [
            sections.headline_panel(comparison, folder),
            sections.per_class_panel(comparison, folder),
            sections.confusion_panel(subject, folder),
            sections.accuracy_curve_panel(comparison, folder),
        ]
    else:  # unlabeled images: one line per section that needs labels, and the label-free diagnostics
        measured = [
            label_free.summary_panel(subject),
            label_free.distribution_panel(subject, folder),
            label_free.changed_panel(subject, folder),
            label_free.drift_panel(subject, folder),
            label_free.needs_labels_panel("headline", "Accuracy"),
            label_free.needs_labels_panel("per-class", "Per-class accuracy gain over zero-shot"),
            label_free.needs_labels_panel("confusion", "Confusion matrix"),
            label_free.needs_labels_panel("accuracy-curve", "Test accuracy over training"),
        ]
    panels = [
        *([label_free.verdict_panel(verdict, choice)] if verdict else []),
        *measured,
        sections.loss_panel(subject, folder),
        sections.agreement_panel(subject, folder),
        sections.pseudo_label_accuracy_panel(subject, folder)
        if subject.labelled
        else label_free.needs_labels_panel("pseudo-label-accuracy", "Pseudo-label accuracy"),
        *sections.mixer_panels(subject, folder),
        sections.gallery_panel(subject, folder),
        sections.other_metrics_panel(subject, folder, shown),
        sections.config_and_timings_panel(subject),
    ]
    title = f"{subject.method} on {subject.dataset}: {subject.name}"
    subtitle = (
        f"{subject.model} ({subject.pretrained or 'random weights'}), {subject.steps} steps, seed "
        f"{subject.config.get('seed', '?')}; run folder {subject.folder}"
    )
    path = folder / REPORT_FILE
    path.write_text(page(title, subtitle, panels), encoding="utf-8")
    return path
