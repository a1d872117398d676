"""The report of a run without labels: what its predictions did, drawn from results.json's label-free diagnostics."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from latteclip.report import plots
from latteclip.report.gallery import load_gallery_images, save_png, thumbnail
from latteclip.report.html import Panel, embed_png, note, table
from latteclip.report.runs import Run

NEEDS_LABELS = (
    "needs labels, and this run has none (train with --eval-dataset NAME --eval-root PATH to measure accuracy)"
)


def needs_labels_panel(key: str, title: str) -> Panel:
    return Panel(key, title, skipped=NEEDS_LABELS)


def summary_panel(subject: Run) -> Panel:
    """Collapse, movement and confidence in one table: zero-shot start vs the adapted model."""
    d = subject.diagnostics
    zero_shot, adapted = d["zero_shot"], d["adapted"]
    rows = [
        [
            "most predicted class",
            f"{escape(zero_shot['top_class'])} ({100 * zero_shot['top_class_share']:.1f}%)",
            f"{escape(adapted['top_class'])} ({100 * adapted['top_class_share']:.1f}%)",
        ],
        [
            "entropy of the predictions (fraction of log C)",
            f"{zero_shot['normalized_entropy']:.3f}",
            f"{adapted['normalized_entropy']:.3f}",
        ],
        ["mean margin (top-1 minus top-2 cosine)", f"{zero_shot['mean_margin']:.4f}", f"{adapted['mean_margin']:.4f}"],
        ["images whose class changed from zero-shot", "", f"{100 * d['changed_from_zero_shot']:.1f}%"],
        ["mean cosine of each class weight with its zero-shot start", "1", f"{d['mean_class_weight_drift']:.4f}"],
    ]
    rows += [
        [f"mean mixer weight, {escape(kind)} texts", "", f"{weight:.3f}"]
        for kind, weight in d.get("mean_mixer_weights", {}).items()
    ]
    body = note(
        f"No labelled images: the numbers below read no label. {d['images']} training images; "
        f"{NEEDS_LABELS.split(' (')[0]} for accuracy."
    )
    body += table(["", "zero-shot", escape(subject.method)], rows)
    return Panel("label-free", "Without labels: what the predictions did", body)


def distribution_panel(subject: Run, out: Path) -> Panel:
    d = subject.diagnostics
    names = list(d["adapted"]["counts"])
    total = max(1, d["images"])
    series = {
        name: [100 * d[key]["counts"][c] / total for c in names]
        for name, key in (("adapted", "adapted"), ("zero-shot", "zero_shot"))
    }
    figure = plots.plot_grouped_bars(
        names, series, out / "prediction_distribution.png", "share of images predicted (%)"
    )
    return Panel(
        "prediction-distribution",
        "Prediction distribution: zero-shot vs adapted",
        embed_png(
            figure,
            "prediction distribution",
            "Share of the training images predicted as each class; "
            "one class taking most images is the collapse self-training can fall into.",
        ),
    )


def drift_panel(subject: Run, out: Path) -> Panel:
    drift = subject.diagnostics["class_weight_drift"]
    figure = plots.plot_grouped_bars(
        list(drift),
        {"cosine": list(drift.values())},
        out / "class_weight_drift.png",
        "cosine with the zero-shot class weight",
    )
    return Panel(
        "class-weight-drift",
        "Class weight drift (LatteCLIP: prototype drift)",
        embed_png(
            figure,
            "class weight drift",
            "Cosine of each class weight of the adapted classifier with its zero-shot start; 1 means it did not move.",
        ),
    )


def changed_panel(subject: Run, out: Path) -> Panel:
    title = "Images whose class changed"
    examples = subject.diagnostics.get("changed_examples", [])
    if not examples:
        return Panel("changed", title, skipped="no training image changed class from zero-shot")
    pictures = load_gallery_images(subject.config, [e["image"] for e in examples])
    cards = []
    for number, entry in enumerate(examples):
        image = pictures.images.get(entry["image"])
        picture = (
            embed_png(save_png(thumbnail(image), out / f"changed_{number:02d}.png"), entry["image"], "")
            if image
            else ""
        )
        cards.append(
            f'<div class="card"><div class="pictures">{picture}</div><p>{escape(entry["image"])}<br>'
            f"zero-shot <b>{escape(entry['zero_shot'])}</b> → <b>{escape(entry['adapted'])}</b></p></div>"
        )
    body = note(f"Some pictures are missing: {pictures.problem}.") if pictures.problem else ""
    return Panel("changed", title, body + f'<div class="cards">{"".join(cards)}</div>')


def verdict_panel(verdict: Mapping[str, Any], choice: Mapping[str, Any] | None) -> Panel:
    """`adapt`'s verdict, at the top: which predictions to use and why, the warning signals, each candidate's scores."""
    use = "the zero-shot model's" if verdict["use"] == "zero-shot" else "the adapted model's"
    body = f"<p><b>Use {use} predictions</b> ({escape(verdict['predictions'])}): {escape(verdict['why'])}.</p>"
    if verdict["signals"]:
        items = "".join(f"<li>{escape(signal)}</li>" for signal in verdict["signals"])
        body += f'<p class="warning"><b>Warning: the adaptation may not be trustworthy.</b></p><ul>{items}</ul>'
    else:
        body += note("No label-free warning signal. The scores read no label and promise no accuracy.")
    if choice:
        names = list(choice["chosen"]["scores"])
        rows = [
            [
                ", ".join(f"{k}={v}" for k, v in c["options"].items()) or "(as configured)",
                *(f"{c['scores'][n]:.4f}" for n in names),
            ]
            for c in choice["candidates"]
        ]
        body += note(
            f"Candidates, scored on held-back images they did not train on; chosen by {choice['score']} "
            "(what each score loses against a choice made with labels, on the proxy benchmark: docs/results.md, "
            '"Label-free choice").'
        )
        body += table(["candidate", *names], rows, numeric=range(1, len(names) + 1))
    return Panel("verdict", "Verdict: which predictions to use", body)
