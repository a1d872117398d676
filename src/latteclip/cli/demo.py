"""`demo`: the whole pipeline offline on CPU, on the Fashion-MNIST subset bundled with the package.

Pre-trains the tiny CLIP and the describer's once (cached), adapts it without labels to shifted target domains with
every method of `configs/demo.yaml`, prints the table and writes it with the run's summary.
Every stage is cached or resumable: a second demo reuses the pre-trained model and the finished
runs, and a stopped one continues where it was.
"""

from __future__ import annotations

import argparse
import time

from latteclip.cli import command
from latteclip.config import comma_list


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
    from latteclip import api
    from latteclip.experiments.machine import elapsed

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
    started = time.time()
    done = api.demo(args.config, args.quick, overrides, lambda line: print(line, flush=True))
    print(f"\n{done.header}\n\n{done.table}")
    print(f"\ntable and summary: {done.results}, {done.summary}")
    for path in done.reports:
        print(f"report: {path}")
    print(f"demo finished in {elapsed(started)}")
    return 0
