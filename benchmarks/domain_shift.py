"""The domain-shift benchmark: every shift x every method x 3 seeds, written to docs/results.md.

    PYTHONPATH=src python benchmarks/domain_shift.py              # the full table (hours on 2 CPU cores)
    PYTHONPATH=src python benchmarks/domain_shift.py --shifts rotation --methods zeroshot,flyp_pl \\
        --seeds 0 --out /tmp/slice.md                             # a slice
    PYTHONPATH=src python benchmarks/domain_shift.py --sweep --reads-labels   # and the description sweep (reads labels)

It runs the packaged `domain-shift` experiment (`configs/experiments/domain-shift.yaml`: the demo's
file with its `benchmark` section, so the same method list plus the other rows, every shift, seeds
0-2, the whole bundled target split, and the four-epoch pre-training its archived runs were made with). Per shift,
the options an entry lists under `search` are chosen first on held-out training images (train on the rest of the
training split, top-1 on the held-out part, seed 0); test labels are never read for a choice.
Every run is cached in its run folder, so a stopped benchmark continues where it was.
Its section of docs/results.md records the command, the machine, the choices, the table (mean ±
sample std over seeds), and, for the label-free methods, the measured pseudo-label accuracy and
mixer weights with every shift where a method does not beat zero-shot or FLYP + pseudo-labels.

`--sweep` (ANALYSIS, READS THE TRUE LABELS of the training images, refused without `--reads-labels`)
then trains LatteCLIP on blur-noise with texts that name the true class for a share q of the images
and another class otherwise, q in SWEEP_SHARES, and writes a section with a plot of top-1 against q
beside the zero-shot and FLYP + pseudo-labels levels of the main table, and a section on what the describer's
image texts know that the pseudo-labels do not, per shift (`experiments.text_signal`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from latteclip.config import comma_list
from latteclip.data.shifts import UNSHIFTED
from latteclip.describe.store import ANALYSIS_TAG, DescriptionStore
from latteclip.engine.describing import true_class_descriptions
from latteclip.engine.score_names import default_score
from latteclip.errors import LatteclipError
from latteclip.experiments.archive import RunArchive
from latteclip.experiments.choice_analysis import best_by, lowest_heldout_regret, score_row, scores_measured
from latteclip.experiments.machine import use_threads
from latteclip.experiments.runner import (
    ExperimentRuns,
    describing_entry,
    finished_run,
    prepare_stages,
    run_config,
    run_experiment,
)
from latteclip.experiments.spec import Experiment, MethodEntry, deep_merge, load_experiment, package_experiment_file
from latteclip.experiments.tables import Cells, aggregate, format_cell, results_table
from latteclip.experiments.text_signal import TextSignal, run_text_signal
from latteclip.report.plots import plot_against_share

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_page import RESULTS, write_section

ARCHIVE = Path(__file__).resolve().parent / "archive"
SWEEP_SHARES = (0.1, 0.3, 0.5, 0.7, 0.9)
SWEEP_SHIFT = "blur-noise"
SHARE = "predictions/top_class_share"
COLLAPSE_MARGIN = 0.05  # a label-free method's top-class share this far above zero-shot's is reported as collapse
SWEEP_NEEDS = ("zeroshot", "flyp_pl", "latteclip")  # entries (by name) the sweep reads or reruns


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=str(package_experiment_file("domain-shift")),
        help="experiment file (default: configs/experiments/domain-shift.yaml)",
    )
    parser.add_argument("--variant", help="section of the experiment file to apply (default: none)")
    parser.add_argument("--shifts", help="comma-separated subset of the shifts")
    parser.add_argument("--methods", help="comma-separated subset of the method entries (by name)")
    parser.add_argument("--seeds", help="comma-separated seeds (default from the config: 0,1,2)")
    parser.add_argument("--root", help="'bundled' or a folder with the Fashion-MNIST IDX files")
    parser.add_argument("--max-steps", dest="max_steps", type=int, help="override the training steps of every run")
    parser.add_argument("--limit", type=int, help="class-balanced subset of N target images per split")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per idle core, from the load average)")
    parser.add_argument("--output", help="folder of the run folders (default: runs/benchmark)")
    parser.add_argument(
        "--archive",
        default=str(ARCHIVE),
        help="folder of the archived results a checkout keeps (default: "
        "benchmarks/archive); 'none': only the run folders",
    )
    parser.add_argument(
        "--rerun",
        help="comma-separated entries to train anew, not reused from run folders or the archive "
        "(after a change to their method's code)",
    )
    parser.add_argument(
        "--out",
        default=str(RESULTS),
        help="the results page whose domain_shift section is written (default: docs/results.md)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=f"also the description sweep on {SWEEP_SHIFT}: LatteCLIP with texts naming the "
        "true class for a share q of the images (ANALYSIS: reads the true training labels; needs --reads-labels)",
    )
    parser.add_argument(
        "--choice-analysis",
        dest="choice_analysis",
        action="store_true",
        help="also run every candidate of every choice on the target (first seed) and write the table of how each "
        "label-free score would have chosen against the held-out labels (ANALYSIS: reads the held-out labels; needs "
        "--reads-labels)",
    )
    parser.add_argument(
        "--reads-labels",
        dest="reads_labels",
        action="store_true",
        help="allow --sweep and --choice-analysis to read labels of the training images",
    )
    args = parser.parse_args(argv)
    for flag, what in (
        ("sweep", "--sweep writes descriptions from the TRUE labels of the training images"),
        ("choice_analysis", "--choice-analysis measures the label-free scores against the held-out images' labels"),
    ):
        if getattr(args, flag) and not args.reads_labels:
            raise LatteclipError(f"{what} (analysis only): pass --reads-labels as well to run it")
    return args


def experiment_from(args: argparse.Namespace) -> Experiment:
    overrides: dict[str, Any] = {}
    if args.shifts:
        overrides["shifts"] = comma_list(args.shifts)
    if args.seeds:
        overrides["seeds"] = [int(s) for s in args.seeds.split(",")]
    for key in ("root", "output", "threads"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    run = {k: getattr(args, k) for k in ("max_steps", "limit") if getattr(args, k) is not None}
    if run:
        overrides["run"] = run
    experiment = load_experiment(args.config, args.variant, overrides)
    if args.methods:
        wanted = comma_list(args.methods)
        known = {entry.name for entry in experiment.methods}
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise LatteclipError(f"--methods names unknown entries {unknown}; the config has {sorted(known)}")
        experiment.methods = [entry for entry in experiment.methods if entry.name in wanted]
    return experiment


def check_sweep(experiment: Experiment) -> None:
    """Refuse, before any work, a sweep whose reference rows are not in the benchmark."""
    names = {entry.name for entry in experiment.methods}
    missing = [name for name in SWEEP_NEEDS if name not in names]
    if SWEEP_SHIFT not in experiment.shifts or missing:
        raise LatteclipError(
            f"--sweep needs the shift {SWEEP_SHIFT} and the entries {', '.join(SWEEP_NEEDS)} in the benchmark "
            f"(missing: {', '.join(missing + ([] if SWEEP_SHIFT in experiment.shifts else [SWEEP_SHIFT]))})"
        )


def latteclip_with_choice(
    experiment: Experiment, choices: list[dict[str, Any]], shift: str
) -> tuple[MethodEntry, dict[str, Any]]:
    """The benchmark's LatteCLIP entry and the options chosen for it on `shift`'s held-out images."""
    entry = next(e for e in experiment.methods if e.name == "latteclip")
    return entry, next((c["chosen"] for c in choices if c["entry"] == entry.name and c["shift"] == shift), {})


def run_sweep(
    experiment: Experiment, choices: list[dict[str, Any]], archive: RunArchive | None, fresh: bool = False
) -> dict[float, list[dict[str, Any]]]:
    """LatteCLIP on the sweep's shift with true-class texts at each share (READS THE TRUE LABELS), with its chosen
    options."""
    entry, choice = latteclip_with_choice(experiment, choices, SWEEP_SHIFT)
    store_path = experiment.output / "sweep" / "true-class-descriptions.sqlite"
    store_path.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"ANALYSIS: the description sweep writes texts from the TRUE labels of {experiment.target(SWEEP_SHIFT)}'s "
        f"training images into {store_path}",
        flush=True,
    )
    results: dict[float, list[dict[str, Any]]] = {}
    for share in SWEEP_SHARES:
        model = f"true-class-q{share}"
        swept = dataclasses.replace(
            entry,
            needs=[],
            overrides=deep_merge(
                entry.overrides, {"store": str(store_path), "method_options": {"described_by": model + ANALYSIS_TAG}}
            ),
        )
        for seed in experiment.seeds:
            config = run_config(
                experiment, swept, experiment.target(SWEEP_SHIFT), seed, f"sweep/q{share}/{entry.name}-s{seed}", choice
            )

            def describe(c, share=share, model=model) -> None:
                with DescriptionStore(c.store) as store:
                    true_class_descriptions(c, share, store, model, reads_labels=True)

            print(f"LatteCLIP with true-class texts for {100 * share:.0f}% of the images, seed {seed}", flush=True)
            run = finished_run(config, describe, archive, fresh)
            results.setdefault(share, []).append({**run.summary, "seed": seed})
            print(
                f"  top-1 {100 * run.results['top1']:.2f}%" + (" (from the archive)" if run.archived else ""),
                flush=True,
            )
    return results


def sweep_section(
    experiment: Experiment, cells: Cells, sweep: dict[float, list[dict[str, Any]]], figure: Path, page: Path
) -> str:
    """The sweep's section: what it reads, the plot, and its table."""
    by_name = {e.name: e for e in experiment.methods}
    lines = {
        by_name[name].label: aggregate([r["top1"] for r in cells[(name, SWEEP_SHIFT)]])["mean"]
        for name in ("zeroshot", "flyp_pl")
    }
    lines["LatteCLIP with the describer's texts"] = aggregate([r["top1"] for r in cells[("latteclip", SWEEP_SHIFT)]])[
        "mean"
    ]
    plot_against_share(
        list(sweep),
        [[r["top1"] for r in runs] for runs in sweep.values()],
        "LatteCLIP",
        lines,
        figure,
        "share q of training images whose texts name the true class",
    )
    try:
        shown = figure.relative_to(page.parent)
    except ValueError:
        shown = figure
    parts = [
        f"**Analysis: reads the true labels of the training images.** LatteCLIP on `{experiment.target(SWEEP_SHIFT)}`, "
        "with its chosen options, where each training image's image and group texts name its true class with "
        "probability q and another class drawn at random otherwise (text: the class's first template and a sentence of "
        "the clothing vocabulary made of that class's nouns and attributes), stored under an analysis model name in a "
        "separate store. The dashed lines are the main table's means on the same shift.",
        "",
        f"![LatteCLIP top-1 against the share of true-class texts]({shown})",
        "",
        "| q | top-1 % (mean ± std over seeds) | " + " | ".join(f"seed {s}" for s in experiment.seeds) + " |",
        "|---|---|" + "---|" * len(experiment.seeds),
    ]
    for share, runs in sweep.items():
        parts.append(
            f"| {share} | {format_cell([r['top1'] for r in runs])} | "
            + " | ".join(f"{100 * r['top1']:.2f}" for r in runs)
            + " |"
        )
    parts += ["", "Reference levels: " + "; ".join(f"{name} {100 * value:.2f}%" for name, value in lines.items()) + "."]
    return "\n".join(parts)


def text_signals(experiment: Experiment, choices: list[dict[str, Any]]) -> dict[str, TextSignal]:
    """Per shift, what the image texts of LatteCLIP's first seed know beside its pseudo-labels (READS THE TRUE
    LABELS)."""
    signals = {}
    for shift in experiment.shifts:
        entry, choice = latteclip_with_choice(experiment, choices, shift)
        config = run_config(
            experiment,
            entry,
            experiment.target(shift),
            experiment.seeds[0],
            f"{shift}/{entry.name}-s{experiment.seeds[0]}",
            choice,
        )
        prepare_stages(
            experiment, entry, config, lambda line: print(line, flush=True)
        )  # only hashes images already described
        print(f"ANALYSIS: what the image texts of {config.dataset} know (reads its true training labels)", flush=True)
        signals[shift] = run_text_signal(config, reads_labels=True)
    return signals


def text_signal_section(signals: dict[str, TextSignal]) -> str:
    """The table of text_signals, with what each column says about LatteCLIP's prototype update."""
    lines = [
        "**Analysis: reads the true labels of the training images.** For each target's training images, the image text "
        "the describer wrote (the texts LatteCLIP reads) is given the class whose text it is nearest to in the "
        "pre-trained model, the way the model being adapted reads it, and compared with the image's true class and its "
        "zero-shot pseudo-label. LatteCLIP's target for an image is 99% its pseudo-label's prototype (Eq. 2, alpha "
        "0.99), and a prototype moves towards the mean text of the images pseudo-labelled with its class; the last "
        "column counts the pseudo-classes whose mean image text is nearest their own class text, where the update can "
        "only reinforce the pseudo-label whatever single texts know.",
        "",
        "| shift | images | pseudo-label accuracy % | texts naming the true class % | wrong pseudo-labels | of those, "
        "text names the true class % | of those, text repeats the wrong class % | pseudo-classes whose mean text is "
        "nearest their own class |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shift, s in signals.items():
        lines.append(
            f"| {shift} | {s.images} | {100 * s.pseudo_label_acc:.1f} | {100 * s.text_acc:.1f} | {s.wrong_labels} | "
            f"{100 * s.text_true_where_wrong:.1f} | {100 * s.text_repeats_wrong:.1f} | {s.classes_nearest_own} of "
            f"{s.classes} |"
        )
    return "\n".join(lines)


def label_free_comparisons(experiment: Experiment, cells: Cells) -> list[str]:
    """Every shift where a label-free trained method does not beat zero-shot, the describer's zero-shot or FLYP +
    pseudo-labels, or gives more than COLLAPSE_MARGIN more of its test predictions to one class than zero-shot."""
    by_method: dict[str, Any] = {}
    for entry in experiment.methods:
        if entry.weights == "source":
            by_method.setdefault(entry.method, entry)  # the first entry of a method on the adapted model
    baselines = [by_method[name] for name in ("zeroshot", "flyp_pl") if name in by_method]
    baselines += [entry for entry in experiment.methods if entry.weights == "describer"]
    lines = []
    for entry in experiment.label_free_trainers():
        for shift in experiment.shifts:
            runs = cells.get((entry.name, shift), [])
            if not runs:
                continue
            mean = aggregate([r["top1"] for r in runs])["mean"]
            zeroshot_runs = cells.get((by_method["zeroshot"].name, shift), []) if "zeroshot" in by_method else []
            beaten_by = []
            for baseline in baselines:
                base_runs = cells.get((baseline.name, shift), [])
                if baseline is entry or not base_runs:
                    continue
                base = aggregate([r["top1"] for r in base_runs])["mean"]
                if mean <= base:
                    beaten_by.append(f"{baseline.label} ({100 * base:.2f}%)")
            if beaten_by:
                measured = measurements(runs, zeroshot_runs)
                lines.append(
                    f"- {shift}: {entry.label} ({100 * mean:.2f}%) does not beat {', '.join(beaten_by)}"
                    + (
                        "; measured (analysis/ and mixer/: training log, last fifth; predictions/: test split): "
                        f"{', '.join(measured)}"
                        if measured
                        else ""
                    )
                    + "."
                )
            share, zero_share = (
                aggregate([r[SHARE] for r in of if SHARE in r])["mean"] if any(SHARE in r for r in of) else None
                for of in (runs, zeroshot_runs)
            )
            if share is not None and zero_share is not None and share > zero_share + COLLAPSE_MARGIN:
                lines.append(
                    f"- {shift}: {entry.label} gives {100 * share:.1f}% of its test predictions to one class, more "
                    f"than {100 * COLLAPSE_MARGIN:.0f} points above zero-shot's {100 * zero_share:.1f}% (collapse onto "
                    "a class)."
                )
    return lines


def measurements(runs: list[dict[str, Any]], zeroshot_runs: list[dict[str, Any]]) -> list[str]:
    """A cell's measured pseudo-label accuracy, mixer weights, prototype drift and top-class share (beside zero-shot's),
    seed means."""

    def mean(key: str, of: list[dict[str, Any]]) -> float:
        return aggregate([r[key] for r in of if key in r])["mean"]

    keys = sorted({k for r in runs for k in r})
    measured = [f"{key} {100 * mean(key, runs):.1f}%" for key in keys if key.startswith("analysis/")]
    measured += [f"{key} {mean(key, runs):.3f}" for key in keys if key.startswith(("mixer/", "prototypes/"))]
    measured += [
        f"{key} {100 * mean(key, runs):.1f}% (zero-shot {100 * mean(key, zeroshot_runs):.1f}%)"
        for key in keys
        if key.startswith("predictions/") and any(key in r for r in zeroshot_runs)
    ]
    return measured


def analysis_table(experiment: Experiment, cells: Cells, prefix: str, percent: bool) -> str | None:
    keys = sorted({k for runs in cells.values() for r in runs for k in r if k.startswith(prefix)})
    if not keys:
        return None
    lines = [
        "| method | measure | " + " | ".join(experiment.shifts) + " |",
        "|---|---|" + "---|" * len(experiment.shifts),
    ]
    for entry in experiment.methods:
        for key in keys:
            row = []
            for shift in experiment.shifts:
                values = [r[key] for r in cells.get((entry.name, shift), []) if key in r]
                row.append(format_cell(values) if percent else (f"{aggregate(values)['mean']:.3f}" if values else "–"))
            if any(v != "–" for v in row):
                lines.append(f"| {entry.label} | {key} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def results_section(experiment: Experiment, runs: ExperimentRuns, seconds: float, archive: RunArchive | None) -> str:
    """The body of the page's domain-shift section (the command and the machine head it)."""
    run = experiment.run
    cells, choices = runs.cells, runs.choices
    pretrained = {name: weights.summary if weights else None for name, weights in runs.pretrained.items()}
    shown = (
        archive.folder.resolve().relative_to(ARCHIVE.parents[1])
        if archive and archive.folder.resolve().is_relative_to(ARCHIVE.parents[1])
        else None
    )
    kept = (
        f" or archived in {shown or archive.folder}/ (finished runs kept in the repository: docs/domain_shift.md)"
        if archive
        else ""
    )
    seeds = ", ".join(str(s) for s in experiment.seeds)
    parts = [
        f"Torch threads: {torch.get_num_threads()}. Finished {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} "
        f"after {seconds / 60:.1f} minutes (runs already in {experiment.output}{kept} are reused, not rerun).",
        "",
        f"- Source: `{experiment.model}` pre-trained from random weights with labels (method `pretrain`) on `fmnist` "
        f"(root `{experiment.root}`): {pretrained['source']['steps']} steps, "
        f"{100 * pretrained['source']['clean_test_top1']:.2f}% zero-shot top-1 on the clean test set.",
        *describer_lines(experiment, pretrained["describer"]),
        f"- Targets: `{experiment.dataset_prefix}-<shift>`, training images never seen in pre-training, adapted "
        "without their labels (except the supervised oracle); top-1 on the shifted test split. Shared run options: "
        f"`{json.dumps(run, sort_keys=True)}`.",
        f"- Seeds: {seeds}; cells are the mean ± sample standard deviation over seeds.",
        "",
        "### Top-1 (%) on the shifted test splits",
        "",
        *top1_table(experiment, runs),
        "",
        "### Hyper-parameters chosen on held-out training images",
        "",
        "Per shift, each option under an entry's `search` is chosen by top-1 on the held-out part of the target's "
        "training split (`fmnist-heldout-<shift>`: trained on the rest of the training split, seed "
        f"{experiment.seeds[0]}); test labels are never read for a choice.",
        "",
    ]
    if choices:
        by = runs.label_free_score
        parts += [
            f"| shift | method | candidates (held-out top-1 %) | chosen | label-free choice (by {by}) |",
            "|---|---|---|---|---|",
        ]
        for item in choices:
            candidates = ", ".join(f"{json.dumps(s['choice'])}: {100 * s['heldout_top1']:.2f}" for s in item["scores"])
            pick = f"`{json.dumps(item['label_free_pick'])}`" if "label_free_pick" in item else "– (reads labels)"
            parts.append(
                f"| {item['shift']} | {item['label']} | {candidates} | `{json.dumps(item['chosen'])}` | {pick} |"
            )
        parts += label_free_choice_section(experiment, runs)
    else:
        parts.append("No entry lists a `search` grid: every option is the configured one.")
    fixed = [
        f"- {entry.label}: `{json.dumps(entry.overrides, sort_keys=True)}`"
        for entry in experiment.methods
        if entry.overrides
    ]
    if fixed:
        parts += [
            "",
            "Configured per-method options (a choice above replaces the option it names; files are relative to the "
            "experiment file):",
            "",
            *fixed,
        ]
    for title, prefix, percent in (
        (
            "Pseudo-label accuracy and agreement during training (analysis only: from the training log, last fifth of "
            "training)",
            "analysis/",
            True,
        ),
        ("Mixer weights during training (last fifth of training)", "mixer/", False),
        (
            "Prototype drift: mean cosine of LatteCLIP's prototypes with their zero-shot start (1 = unmoved; last "
            "fifth of training)",
            "prototypes/",
            False,
        ),
        (
            "CoFT's two models (label-free): share of a batch where T and V predict the same class, and share with a "
            "rejected candidate label (last fifth of training)",
            "coft/",
            True,
        ),
        (
            "Share of test predictions given to the most-predicted class (no label read; the test split is balanced, "
            "so 10% is an even spread and a rise over zero-shot is self-training collapsing onto one class)",
            "predictions/",
            True,
        ),
    ):
        table = analysis_table(experiment, cells, prefix, percent)
        if table:
            parts += ["", f"### {title}", "", table]
    comparisons = label_free_comparisons(experiment, cells)
    trained = [entry.label for entry in experiment.label_free_trainers()]
    if not trained:
        comparisons = ["No label-free method that trains was run."]
    parts += [
        "",
        "### Where a label-free method does not beat zero-shot, the describer's zero-shot or FLYP + pseudo-labels, or "
        "collapses (mean over seeds)",
        "",
    ]
    parts += comparisons or [
        f"Each label-free method that trains ({', '.join(trained)}) beats the baselines on every shift measured "
        "(zero-shot, the describer's zero-shot, and FLYP + pseudo-labels for the other methods)."
    ]
    parts += [
        "",
        "### Every run",
        "",
        "| shift | method | seed | top-1 % | steps | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for entry in experiment.methods:
        for shift in experiment.shifts:
            for r in cells.get((entry.name, shift), []):
                seconds_run = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "–"
                parts.append(
                    f"| {shift} | {entry.label} | {r['seed']} | {100 * r['top1']:.2f} | {r['steps']} | {seconds_run} |"
                )
    return "\n".join(parts)


LABEL_FREE_ROW = "{name}@label-free"  # the cells of an entry's label-free choice in the top-1 table


def top1_table(experiment: Experiment, runs: ExperimentRuns) -> list[str]:
    """The top-1 table, each searched entry followed by its row with the options the default label-free score chose."""
    cells = dict(runs.cells)
    rows = []
    for entry in experiment.methods:
        rows.append((entry.name, entry.label))
        picked = {shift: r for (name, shift), r in runs.label_free.items() if name == entry.name}
        if picked:
            row = LABEL_FREE_ROW.format(name=entry.name)
            cells.update({(row, shift): r for shift, r in picked.items()})
            rows.append((row, f"{entry.label} (label-free choice)"))
    note = (
        [
            "",
            f'A row "(label-free choice)" runs the options the label-free score `{runs.label_free_score}` picks on '
            "the same held-out images, without reading their labels (the row above it: the pick of their labels).",
        ]
        if runs.label_free
        else []
    )
    return [results_table(experiment, cells, rows=rows), *note]


def label_free_choice_section(experiment: Experiment, runs: ExperimentRuns) -> list[str]:
    """Each candidate's label-free scores, and (with --choice-analysis) how each score would have chosen."""
    shifted = [c for c in runs.choices if c["shift"] != UNSHIFTED and "label_free" in c["scores"][0]]
    names = scores_measured(shifted)
    if not names:
        return []
    parts = ["", "### Label-free choice", ""]
    analysed = all("test_top1" in c for choice in shifted for c in choice["scores"])
    if analysed:
        parts += score_table(experiment, shifted, names, runs.label_free_score)
    else:
        parts.append(
            "Without `--choice-analysis --reads-labels` only the scores are shown (the candidates' own test runs, "
            "which the regret needs, are not run)."
        )
    parts += [
        "",
        "Every candidate (scores on the held-out images, higher is better; no label read for a score):",
        "",
        "| shift | method | candidate | held-out top-1 % | test top-1 % (seed "
        f"{experiment.seeds[0]}) | " + " | ".join(names) + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for choice in shifted:
        for c in choice["scores"]:
            test = f"{100 * c['test_top1']:.2f}" if "test_top1" in c else "–"
            values = " | ".join(f"{c['label_free'][n]:.4f}" for n in names)
            parts.append(
                f"| {choice['shift']} | {choice['label']} | `{json.dumps(c['choice'])}` | "
                f"{100 * c['heldout_top1']:.2f} | {test} | {values} |"
            )
    return parts


def score_table(experiment: Experiment, shifted: list[dict[str, Any]], names: list[str], default: str) -> list[str]:
    """One row per score over the shifted domains' choices: regret against the held-out-labelled pick, how often it
    makes that pick, its rank correlation with held-out top-1; then the score with the lowest held-out regret."""
    rows = [score_row(name, shifted) for name in names]
    parts = [
        f"**Analysis: reads the held-out images' labels** (to compare with their choice). Over {len(shifted)} choices "
        "(entry x shifted domain): regret = top-1 points lost against the candidate the held-out labels pick (0 when "
        "the score picks it), on the held-out images and on the test split (seed "
        f"{experiment.seeds[0]} runs of every candidate); same pick = how often the score picks that candidate; "
        "rank correlation = Spearman's between the score and held-out top-1 over an entry's candidates, mean over "
        "the choices where both vary.",
        "",
        "| score | held-out regret: mean | worst | test regret: mean | worst (where) | same pick | rank correlation |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        corr = f"{sum(r.correlations) / len(r.correlations):.2f}" if r.correlations else "–"
        parts.append(
            f"| {r.score} | {sum(r.heldout_regret) / r.choices:.2f} | {max(r.heldout_regret):.2f} | "
            f"{sum(r.test_regret) / r.choices:.2f} | {max(r.test_regret):.2f} ({r.worst_where}) | "
            f"{r.same_pick} of {r.choices} | {corr} |"
        )
    best = lowest_heldout_regret(rows)
    parts += [
        "",
        f"Lowest mean held-out regret: `{best.score}` (the default label-free score here is `{default}`"
        + ("" if best.score == default else "; the measurement names another: change engine/score_names.py")
        + ").",
        *configured_line(experiment, shifted, default),
    ]
    return parts


def configured_line(experiment: Experiment, shifted: list[dict[str, Any]], score: str) -> list[str]:
    """Mean test top-1 (first seed) of the score's picks, the held-out labels' picks and the configured options."""
    by_name = {entry.name: entry for entry in experiment.methods}
    picked, labelled, configured = [], [], []
    for choice in shifted:
        candidates = choice["scores"]
        overrides = by_name[choice["entry"]].overrides
        fixed = {k: overrides.get(k, experiment.run.get(k)) for k in candidates[0]["choice"]}
        chosen = [c for c in candidates if c["choice"] == fixed]
        if not chosen:
            return []  # an entry whose configured option is not a candidate: no like-for-like comparison
        configured.append(chosen[0]["test_top1"])
        labelled.append(next(c for c in candidates if c["choice"] == choice["chosen"])["test_top1"])
        picked.append(best_by(candidates, score)["test_top1"])
    mean = lambda values: 100 * sum(values) / len(values)  # noqa: E731
    return [
        "",
        f"Mean test top-1 over these choices (seed {experiment.seeds[0]}): `{score}`'s picks {mean(picked):.2f}, the "
        f"held-out labels' picks {mean(labelled):.2f}, the configured options {mean(configured):.2f}.",
    ]


def describer_lines(experiment: Experiment, describer: dict | None) -> list[str]:
    if describer is None:
        return []
    return [
        f"- Describer (the offline stand-in for the paper's LMM, writing LatteCLIP's image and group texts): "
        f"`{experiment.describer['model']}` pre-trained the same way with the options "
        f"`{json.dumps(experiment.describer.get('pretrain') or {}, sort_keys=True)}`: {describer['steps']} steps, "
        f'{100 * describer["clean_test_top1"]:.2f}% zero-shot top-1 on the clean test set; its row "describer '
        'zero-shot" is '
        "its accuracy on each target. Both models' captions are half class templates, half sentences of the clothing "
        "vocabulary made of each class's nouns and attributes (`data/fmnist/class_attributes.json`); no target image "
        "or label.",
    ]


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        experiment = experiment_from(args)
        if args.sweep:
            check_sweep(experiment)
        archive = None if args.archive == "none" else RunArchive(args.archive)
        fresh = frozenset(comma_list(args.rerun)) if args.rerun else frozenset()
        use_threads(experiment.threads)
        started = time.time()
        runs = run_experiment(
            experiment,
            choose=True,
            progress=lambda line: print(line, flush=True),
            archive=archive,
            fresh=fresh,
            label_free_score=default_score(describing_entry(experiment) is not None),
            candidate_runs=args.choice_analysis,
        )
        body = results_section(experiment, runs, time.time() - started, archive)
        write_section(
            "domain_shift",
            "Domain shift: Fashion-MNIST, tiny CLIP pre-trained on the clean source domain",
            body,
            Path(args.out),
        )
        print(f"results page: {args.out} (section domain_shift)")
        if args.sweep:
            sweep = run_sweep(experiment, runs.choices, archive, "latteclip" in fresh)
            page = Path(args.out)
            figure = page.parent / "figures" / "description_sweep.png"
            figure.parent.mkdir(parents=True, exist_ok=True)
            write_section(
                "description_sweep",
                f"Analysis (reads labels): LatteCLIP against the share of true-class texts, {SWEEP_SHIFT}",
                sweep_section(experiment, runs.cells, sweep, figure, page),
                page,
            )
            print(f"results page: {args.out} (section description_sweep, figure {figure})")
            write_section(
                "description_signal",
                "Analysis (reads labels): what the describer's image texts know beside the pseudo-labels",
                text_signal_section(text_signals(experiment, runs.choices)),
                page,
            )
            print(f"results page: {args.out} (section description_signal)")
    except LatteclipError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
