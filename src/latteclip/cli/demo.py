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
from typing import TYPE_CHECKING, Any

import yaml

from latteclip.cli import command
from latteclip.config import comma_list
from latteclip.errors import LatteclipError

if TYPE_CHECKING:
    from latteclip.config import RunConfig
    from latteclip.engine.domain_shift import Experiment, MethodEntry


@command("demo", "the whole pipeline offline on CPU: pre-train a tiny CLIP on Fashion-MNIST, adapt it to shifted domains without labels, print the table")
def _demo_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment file (default: the package's configs/demo.yaml)")
    parser.add_argument("--quick", action="store_true", help="the config's quick variant: tiny steps that check the pipeline (numbers mean nothing)")
    parser.add_argument("--output", help="folder for the demo's runs and summary (default: runs/demo)")
    parser.add_argument("--root", help="'bundled' (default) or a folder with the Fashion-MNIST IDX files for the full set")
    parser.add_argument("--shifts", help="comma-separated target shifts, e.g. blur-noise,rotation,tint")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per idle core, from the load average)")


@_demo_parser
def run_demo(args: argparse.Namespace) -> int:
    from latteclip.engine.domain_shift import (
        elapsed,
        load_experiment,
        machine_description,
        package_experiment_file,
        pretrain_describer,
        pretrain_source,
        results_table,
        run_config,
        run_or_reuse,
        run_summary,
        use_threads,
    )

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
    experiment = load_experiment(args.config or package_experiment_file("demo"), "quick" if args.quick else None, overrides)
    check_stages(experiment)
    threads = use_threads(experiment.threads)
    started = time.time()
    pretrainings = 2 if experiment.describer else 1
    stages = pretrainings + len(experiment.shifts) * len(experiment.methods) * len(experiment.seeds)
    stage = 1

    print(f"demo: {stages - pretrainings} runs on {', '.join(experiment.shifts)} with {threads} torch thread(s); output in {experiment.output}", flush=True)
    print(f"[{stage}/{stages}] pre-training {experiment.model} with labels on the clean source domain (cached after the first demo)", flush=True)
    source = pretrain_source(experiment)
    how = "reused from the cache" if source.cached else "trained now"
    print(f"      {how}: zero-shot top-1 {100 * source.summary['clean_test_top1']:.2f}% on the clean test set ({elapsed(started)})", flush=True)
    describer = None
    if experiment.describer:
        stage += 1
        print(f"[{stage}/{stages}] pre-training the describer {experiment.describer['model']} (the LMM's stand-in) with labels on "
              "the same clean source images (cached after the first demo)", flush=True)
        describer = pretrain_describer(experiment)
        how = "reused from the cache" if describer.cached else "trained now"
        print(f"      {how}: zero-shot top-1 {100 * describer.summary['clean_test_top1']:.2f}% on the clean test set ({elapsed(started)})",
              flush=True)

    cells: dict[tuple[str, str], list[dict]] = {}
    run_dirs: dict[tuple[str, str], Path] = {}
    for shift in experiment.shifts:
        for entry in experiment.methods:
            for seed in experiment.seeds:
                stage += 1
                dataset = experiment.target(shift)
                print(f"[{stage}/{stages}] {entry.label} on {dataset} (seed {seed})", flush=True)
                config = run_config(experiment, entry, dataset, seed, f"{shift}/{entry.name}-s{seed}")
                results = run_or_reuse(config, lambda c, entry=entry: prepare_stages(experiment, entry, c))
                cells.setdefault((entry.name, shift), []).append(run_summary(results, config.run_dir))
                run_dirs.setdefault((entry.name, shift), config.run_dir)
                print(f"      top-1 {100 * results['top1']:.2f}% ({elapsed(started)})", flush=True)

    table = results_table(experiment, cells)
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
        "cells": {f"{name}|{shift}": runs for (name, shift), runs in cells.items()},
        "machine": machine_description(),
        "seconds": time.time() - started,
    }
    (experiment.output / "demo.json").write_text(json.dumps(summary, indent=1))
    (experiment.output / "results.md").write_text(f"{header}\n\n{table}\n")
    print(f"\ntable and summary: {experiment.output / 'results.md'}, {experiment.output / 'demo.json'}")
    for path in write_reports(experiment, run_dirs):
        print(f"report: {path}")
    print(f"demo finished in {elapsed(started)}")
    return 0


STAGES = ("descriptions",)


def check_stages(experiment: Experiment) -> None:
    """Refuse, before any work, an entry that needs a stage the demo does not know."""
    for entry in experiment.methods:
        unknown = [stage for stage in entry.needs if stage not in STAGES]
        if unknown:
            raise LatteclipError(
                f"{experiment.source}: method entry '{entry.name}' needs stage(s) {', '.join(unknown)}; the demo runs: {', '.join(STAGES)}"
            )
        if "descriptions" in entry.needs and not experiment.describe.get("lmm"):
            raise LatteclipError(f"{experiment.source}: '{entry.name}' needs descriptions: give the describer under 'describe:' (e.g. lmm: offline)")


def prepare_stages(experiment: Experiment, entry: MethodEntry, config: RunConfig) -> None:
    """Run the stages `entry` needs for the training images of `config` (only what is missing is done)."""
    if "descriptions" in entry.needs:
        describe_training_images(config, experiment.describe, experiment.output / "describe")


def describe_training_images(config: RunConfig, describe: dict[str, Any], folder: Path) -> None:
    """`latteclip describe` over the training images `config` trains on, into the store it reads.

    The command is given a config file (kept in `folder`) with the run's data, model and store
    options, so the images described are exactly the run's; the store skips images already
    described, so a repeated call only hashes the images.
    """
    from latteclip.cli import main

    values = {key: getattr(config, key) for key in DESCRIBE_RUN_KEYS}
    values["describe"] = dict(describe)
    path = folder / f"{config.dataset}-s{config.seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    code = main(["describe", "--config", str(path)])
    if code != 0:
        raise LatteclipError(f"the description stage for {config.dataset} did not finish (`latteclip describe --config {path}` "
                             f"exited {code}); run the demo again to continue it")


# What decides which images the description stage sees, with which model, and where it stores the texts.
DESCRIBE_RUN_KEYS = ("dataset", "root", "limit", "seed", "classnames", "templates", "domain", "split_file",
                     "model", "pretrained", "device", "store", "workers", "eval_batch_size")


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
        others = [run_dirs[(e.name, shift)] for e in experiment.methods if e.name != subject and (e.name, shift) in run_dirs]
        paths.append(write_report([run_dirs[(subject, shift)], *others], experiment.output / shift / "report"))
    return paths
