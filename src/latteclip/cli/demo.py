"""`demo`: the whole pipeline offline on CPU, on the Fashion-MNIST subset bundled with the package.

Pre-trains the tiny CLIP and the describer's once (cached), adapts it without labels to shifted target domains with
every method of `configs/demo.yaml`, prints the table and writes it with the run's summary.
Every stage is cached or resumable: a second demo reuses the pre-trained model and the finished
runs, and a stopped one continues where it was.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from latteclip.cli import command
from latteclip.config import comma_list

if TYPE_CHECKING:
    from latteclip.experiments.spec import Experiment


@command(
    "demo",
    "the whole pipeline offline on CPU: pre-train a tiny CLIP on Fashion-MNIST, adapt it to shifted domains without "
    "labels, print the table",
)
def _demo_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment file (default: the package's configs/demo.yaml)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the config's quick variant: tiny steps that check the pipeline (numbers mean nothing)",
    )
    parser.add_argument("--output", help="folder for the demo's runs and summary (default: runs/demo)")
    parser.add_argument(
        "--root", help="'bundled' (default) or a folder with the Fashion-MNIST IDX files for the full set"
    )
    parser.add_argument("--shifts", help="comma-separated target shifts, e.g. blur-noise,rotation,tint")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per idle core, from the load average)")


@_demo_parser
def run_demo(args: argparse.Namespace) -> int:
    from latteclip.api import run_experiment
    from latteclip.experiments.machine import elapsed, machine_description, use_threads
    from latteclip.experiments.spec import load_experiment, package_experiment_file
    from latteclip.experiments.tables import results_table

    overrides = {
        key: value
        for key, value in (
            ("output", args.output),
            ("root", args.root),
            ("threads", args.threads),
            ("shifts", comma_list(args.shifts) if args.shifts else None),
        )
        if value is not None
    }
    experiment = load_experiment(
        args.config or package_experiment_file("demo"), "quick" if args.quick else None, overrides
    )
    threads = use_threads(experiment.threads)
    started = time.time()
    runs_count = len(experiment.shifts) * len(experiment.methods) * len(experiment.seeds)
    print(
        f"demo: {runs_count} runs on {', '.join(experiment.shifts)} with {threads} torch thread(s); output in "
        f"{experiment.output}",
        flush=True,
    )
    runs = run_experiment(experiment, choose=False, progress=lambda line: print(line, flush=True))
    source, describer = runs.pretrained["source"], runs.pretrained["describer"]

    table = results_table(experiment, runs.cells)
    header = (
        f"Pre-trained {experiment.model}: {100 * source.summary['clean_test_top1']:.2f}% zero-shot top-1 on the clean "
        f"Fashion-MNIST test set. Target domains: top-1 (%) on each shifted test split"
        + (f", mean ± std over seeds {experiment.seeds}" if len(experiment.seeds) > 1 else "")
        + "."
    )
    print()
    print(header)
    print()
    print(table)
    experiment.output.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": experiment.source,
        "quick": bool(args.quick),
        "pretrained": source.summary,
        "describer": describer.summary if describer else None,
        "cells": {f"{name}|{shift}": cell for (name, shift), cell in runs.cells.items()},
        "machine": machine_description(),
        "seconds": time.time() - started,
    }
    (experiment.output / "demo.json").write_text(json.dumps(summary, indent=1))
    (experiment.output / "results.md").write_text(f"{header}\n\n{table}\n")
    print(f"\ntable and summary: {experiment.output / 'results.md'}, {experiment.output / 'demo.json'}")
    for path in write_reports(experiment, runs.run_dirs):
        print(f"report: {path}")
    print(f"demo finished in {elapsed(started)}")
    return 0


def write_reports(experiment: Experiment, run_dirs: dict[tuple[str, str], Path]) -> list[Path]:
    """Per shift, the report (`latteclip report`) of the reported method's run against the other methods' runs.

    The reported method is the config's `report` entry, else the first label-free method that trains.
    """
    from latteclip.report import write_report

    subject = experiment.report or next((e.name for e in experiment.label_free_trainers()), None)
    if subject is None:
        return []
    paths = []
    for shift in experiment.shifts:
        others = [
            run_dirs[(e.name, shift)] for e in experiment.methods if e.name != subject and (e.name, shift) in run_dirs
        ]
        paths.append(write_report([run_dirs[(subject, shift)], *others], experiment.output / shift / "report"))
    return paths
