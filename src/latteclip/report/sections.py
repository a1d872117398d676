"""The report's panels: each turns part of the run folders into figures and tables, or says why it has none."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import yaml

from latteclip.report import plots
from latteclip.report.gallery import collage, gallery_paths, load_gallery_images, save_png, thumbnail
from latteclip.report.html import Panel, embed_png, note, table
from latteclip.report.runs import EVAL_KEY, TEXT_KINDS, Comparison, Run, per_class_gain

AGREEMENT_KEY = "analysis/pl_agreement"
PSEUDO_LABEL_ACC_KEY = "analysis/pseudo_label_acc"
MIXER_KEYS = {kind: f"mixer/weight_{kind}" for kind in TEXT_KINDS}
READS_LABELS_NOTE = (
    "Reads labels: computed from the true labels of each training batch to judge the pseudo-labels. "
    "Analysis only: never fed back into training or used to choose a model."
)


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def headline_panel(comparison: Comparison, out: Path) -> Panel:
    subject, zero_shot = comparison.subject, comparison.zero_shot_top1
    cards = [
        f'<div><div class="value">{100 * subject.top1:.2f}%</div><div class="label">top-1 of {escape(subject.method)} '
        f"on {subject.results.get('test', {}).get('n', '?')} test images</div></div>"
    ]
    if zero_shot is not None:
        delta = subject.top1 - zero_shot
        cards.append(
            f'<div><div class="value">{100 * zero_shot:.2f}%</div><div class="label">zero-shot '
            f"({escape(comparison.zero_shot_source)})</div></div>"
        )
        cards.append(
            f'<div><div class="value {"gain" if delta >= 0 else "drop"}">{_points(delta)}</div>'
            f'<div class="label">points vs zero-shot</div></div>'
        )
    body = f'<div class="headline">{"".join(cards)}</div>'
    if zero_shot is None:
        body += note(
            "No zero-shot reference: the run has no step-0 evaluation and no zeroshot run was named "
            "(latteclip report RUN ZEROSHOT_RUN)."
        )
    rows, classes = [], []
    for run in comparison.runs:
        label_note = "reads training labels (supervised upper bound)" if run.results.get("reads_train_labels") else ""
        if run is comparison.zero_shot_run and run is not subject:
            label_note = "zero-shot reference"
        rows.append(
            [
                comparison.label(run),
                run.method,
                f"{run.model} / {run.pretrained or 'random'}",
                f"{100 * run.top1:.2f}",
                _points(run.top1 - zero_shot) if zero_shot is not None else "–",
                str(run.steps),
                label_note,
            ]
        )
        classes.append("subject" if run is subject else "")
    body += table(
        ["run", "method", "model / weights", "top-1 %", "Δ vs zero-shot", "steps", ""],
        rows,
        numeric=(3, 4, 5),
        row_classes=classes,
    )
    figure = plots.plot_headline(
        [comparison.label(r) for r in comparison.runs],
        [r.top1 for r in comparison.runs],
        zero_shot,
        out / "headline.png",
    )
    body += embed_png(figure, "top-1 accuracy of each run", "Test top-1 of each run named; dashed: zero-shot.")
    return Panel("headline", "Accuracy", body)


def per_class_panel(comparison: Comparison, out: Path) -> Panel:
    title = "Per-class accuracy gain over zero-shot"
    subject, reference = comparison.subject, comparison.zero_shot_run
    if reference is subject:
        return Panel("per-class", title, skipped="this is the zero-shot run itself")
    if reference is None:
        return Panel(
            "per-class",
            title,
            skipped="per-class zero-shot accuracy needs a zeroshot run of the same dataset and "
            "model: name its folder too (latteclip report RUN ZEROSHOT_RUN)",
        )
    gains = per_class_gain(subject, reference)
    if not gains:
        return Panel(
            "per-class", title, skipped=f"runs {subject.name} and {reference.name} share no class with test images"
        )
    figure, omitted = plots.plot_per_class_gain(gains, out / "per_class_gain.png")
    improved = sum(1 for _, ft, zs in gains if ft > zs)
    dropped = sum(1 for _, ft, zs in gains if ft < zs)
    caption = (
        f"Change in test accuracy per class, {subject.name} vs {reference.name}: {improved} classes up, "
        f"{dropped} down, {len(gains) - improved - dropped} unchanged; labels show zero-shot→fine-tuned %."
    )
    if omitted:
        caption += f" {omitted} classes in the middle are not drawn."
    return Panel("per-class", title, embed_png(figure, "per-class accuracy gain", caption))


def confusion_panel(subject: Run, out: Path) -> Panel:
    title = "Confusion matrix"
    matrix, classnames = subject.confusion, list(subject.per_class)
    if not matrix or len(matrix) != len(classnames):
        return Panel("confusion", title, skipped="results.json has no confusion matrix")
    figure = plots.plot_confusion(matrix, classnames, out / "confusion.png")
    return Panel(
        "confusion",
        title,
        embed_png(
            figure,
            "confusion matrix",
            f"Test split of {subject.name}; rows are the true class, shaded by the fraction predicted as each class.",
        ),
    )


def _not_trained(subject: Run) -> str | None:
    if subject.steps == 0 or not subject.train_records:
        return f"{subject.name} ({subject.method}) has no training steps"
    return None


def accuracy_curve_panel(comparison: Comparison, out: Path) -> Panel:
    title = "Test accuracy over training"
    subject = comparison.subject
    if _not_trained(subject) or len(subject.series(EVAL_KEY)[0]) < 2:
        return Panel(
            "accuracy-curve",
            title,
            skipped=_not_trained(subject)
            or f"{subject.name} has fewer than two test evaluations (train with --eval-every N)",
        )
    series = [(comparison.label(run), *run.series(EVAL_KEY)) for run in comparison.runs if run.method != "zeroshot"]
    series = [s for s in series if s[1]]
    reference = ("zero-shot", comparison.zero_shot_top1) if comparison.zero_shot_top1 is not None else None
    figure = plots.plot_curves(series, out / "accuracy_curve.png", "test top-1 (%)", percent=True, reference=reference)
    return Panel(
        "accuracy-curve",
        title,
        embed_png(
            figure,
            "test accuracy over training",
            "Top-1 on the test split at each evaluation (step 0: before training).",
        ),
    )


def loss_panel(subject: Run, out: Path) -> Panel:
    title = "Training loss"
    keys = [k for k in subject.metric_keys() if "loss" in k.lower()]
    series = [(k, *subject.series(k)) for k in keys]
    if _not_trained(subject) or not series:
        return Panel("loss", title, skipped=_not_trained(subject) or "no loss was logged")
    figure = plots.plot_curves(series, out / "loss.png", "loss")
    return Panel("loss", title, embed_png(figure, "training loss", "Loss of each logged step."))


def _percent_curve(subject: Run, key: str, label: str, path: Path, ylabel: str):
    """One logged fraction over training as a percent curve, or None when the run did not log it."""
    steps, values = subject.series(key)
    return plots.plot_curves([(label, steps, values)], path, ylabel, percent=True) if steps else None


def agreement_panel(subject: Run, out: Path) -> Panel:
    title = "Pseudo-label agreement (zero-shot vs fine-tuning)"
    figure = _percent_curve(subject, AGREEMENT_KEY, "agreement", out / "pl_agreement.png", "agreement (%)")
    if figure is None:
        return Panel(
            "agreement", title, skipped=_not_trained(subject) or f"method {subject.method} does not log {AGREEMENT_KEY}"
        )
    return Panel(
        "agreement",
        title,
        embed_png(
            figure,
            "pseudo-label agreement",
            "Fraction of the batch where the frozen zero-shot label and the current model's label agree; reads no "
            "labels.",
        ),
    )


def pseudo_label_accuracy_panel(subject: Run, out: Path) -> Panel:
    title = "Pseudo-label accuracy"
    figure = _percent_curve(
        subject, PSEUDO_LABEL_ACC_KEY, "pseudo-label accuracy", out / "pseudo_label_accuracy.png", "accuracy (%)"
    )
    if figure is None:
        return Panel(
            "pseudo-label-accuracy",
            title,
            skipped=_not_trained(subject) or f"method {subject.method} trains on no pseudo-labels",
        )
    body = f'<p class="analysis"><span class="badge analysis">reads labels</span> {escape(READS_LABELS_NOTE)}</p>'
    body += embed_png(
        figure,
        "pseudo-label accuracy (analysis, reads labels)",
        "Fraction of each training batch whose training label equals the true label.",
    )
    return Panel("pseudo-label-accuracy", title, body)


def mixer_panels(subject: Run, out: Path) -> list[Panel]:
    """The mixer weight of each text kind over training, and their distribution (LatteCLIP)."""
    over_time = "Mixer weight per text kind over training"
    series = [(kind, *subject.series(key)) for kind, key in MIXER_KEYS.items()]
    series = [s for s in series if s[1]]
    if series:
        colours = [plots.KIND_COLOURS[kind] for kind, _, _ in series]
        figure = plots.plot_curves(series, out / "mixer_weights_curve.png", "mean mixer weight", colours=colours)
        first = Panel(
            "mixer-curve",
            over_time,
            embed_png(figure, "mixer weight over training", "Mean weight w(T) of each text kind per step."),
        )
    else:
        first = Panel(
            "mixer-curve",
            over_time,
            skipped=_not_trained(subject) or f"method {subject.method} logs no mixer weights (LatteCLIP does)",
        )
    distribution = "Mixer weight distribution"
    weights = (
        {k: [float(v) for v in subject.mixer_weights.get(k, [])] for k in TEXT_KINDS} if subject.mixer_weights else {}
    )
    weights = {k: v for k, v in weights.items() if v}
    if weights:
        figure = plots.plot_mixer_distribution(weights, out / "mixer_weights_distribution.png")
        second = Panel(
            "mixer-distribution",
            distribution,
            embed_png(figure, "mixer weight distribution", "Sampled weights of each text kind (mixer_weights.json)."),
        )
    else:
        second = Panel(
            "mixer-distribution",
            distribution,
            skipped=f"{subject.name} has no mixer_weights.json (LatteCLIP writes it)",
        )
    return [first, second]


def _weight_cell(weight: float | None, largest: float) -> str:
    if weight is None:
        return '<td class="weight">–</td>'
    width = 0 if largest <= 0 else max(1, round(80 * weight / largest))
    return f'<td class="weight"><span class="bar" style="width:{width}px"></span>{weight:.3f}</td>'


def gallery_panel(subject: Run, out: Path) -> Panel:
    """Training images with their texts, mixer weights and both pseudo-labels (the paper's Figure 7)."""
    title = "Gallery: training images, texts, mixer weights, pseudo-labels"
    if not subject.gallery:
        return Panel("gallery", title, skipped=f"{subject.name} has no gallery.json (LatteCLIP writes it)")
    pictures = load_gallery_images(subject.config, gallery_paths(subject.gallery))
    cards = []
    for number, entry in enumerate(subject.gallery):
        figures = []
        image = pictures.images.get(entry["image"])
        if image is not None:
            path = save_png(thumbnail(image), out / f"gallery_{number:02d}_image.png")
            figures.append(embed_png(path, f"training image {entry['image']}", "training image"))
        members = list(
            entry.get("group_members", [])
        )  # the collage's cells in order, as the LMM saw them (the anchor may be absent)
        member_images = [pictures.images[m] for m in members if m in pictures.images]
        if len(member_images) > 1:
            group_png = save_png(collage(member_images), out / f"gallery_{number:02d}_group.png")
            figures.append(embed_png(group_png, f"group of {entry['image']}", f"group ({len(member_images)} images)"))
        zs, ft = entry.get("zs_label", "?"), entry.get("ft_label", "?")
        badge = '<span class="badge agree">agree</span>' if zs == ft else '<span class="badge disagree">disagree</span>'
        labels = f"zero-shot label <b>{escape(zs)}</b> · fine-tuning label <b>{escape(ft)}</b> {badge}"
        true_class = pictures.true_classes.get(entry["image"])
        if true_class is not None:
            labels += f'<br><span class="badge analysis">reads labels</span> true class: {escape(true_class)}'
        texts, weights = entry.get("texts", {}), entry.get("weights", {})
        known = [w for w in weights.values() if isinstance(w, (int, float))]
        largest = max(known) if known else 0.0
        rows = "".join(
            f"<tr><th>{escape(kind)}</th><td>{escape(str(texts[kind]))}</td>"
            f"{_weight_cell(weights.get(kind), largest)}</tr>"
            for kind in TEXT_KINDS
            if kind in texts
        )
        cards.append(
            f'<div class="card"><div class="pictures">{"".join(figures)}</div><p>{labels}</p>'
            f"<table><thead><tr><th>text</th><th></th><th>weight</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )
    body = ""
    if pictures.problem:
        body += note(f"Some pictures are missing: {pictures.problem}.")
    body += f'<div class="cards">{"".join(cards)}</div>'
    return Panel("gallery", title, body)


def other_metrics_panel(subject: Run, out: Path, shown: set[str]) -> Panel:
    title = "Other logged metrics"
    keys = [k for k in subject.metric_keys() if k not in shown and "loss" not in k.lower()]
    series = {k: subject.series(k) for k in keys}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return Panel("other-metrics", title, skipped=_not_trained(subject) or "nothing else was logged")
    figure = plots.plot_small_multiples(series, out / "other_metrics.png")
    return Panel(
        "other-metrics",
        title,
        embed_png(figure, "other logged metrics", "Every other value in metrics.jsonl, per logged step."),
    )


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def config_and_timings_panel(subject: Run) -> Panel:
    rows = [
        [key[:-2].replace("_", " ") if key.endswith("_s") else key, _seconds(value)]
        for key, value in subject.timings.items()
    ]
    results = subject.results
    rows += [
        ["steps", str(subject.steps)],
        [
            "test images (unreadable skipped)",
            f"{(results.get('test') or {}).get('n', 'none: no labels')} ({results.get('unreadable_test_images', 0)})",
        ],
        ["unreadable training images skipped", str(results.get("unreadable_train_images", 0))],
    ]
    body = "<h3>Timings</h3>" + table(["stage", "time"], rows, numeric=(1,))
    body += "<h3>Configuration</h3>" + f"<pre>{escape(yaml.safe_dump(subject.config, sort_keys=False))}</pre>"
    return Panel("config", "Configuration and timings", body)
