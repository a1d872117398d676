"""`report`: an HTML page with plots for a run, compared with zero-shot and the other runs named."""

from __future__ import annotations

import argparse

from latteclip.cli import command


@command("report", "HTML report (self-contained, plus PNG plots) of a run against zero-shot and other runs")
def _report_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders; the first that trains is reported, a zeroshot run gives the per-class reference",
    )
    parser.add_argument("--out", help="folder for report.html and the PNGs (default RUN_DIR/report)")


@_report_parser
def run_report(args: argparse.Namespace) -> int:
    from latteclip.report import write_report

    path = write_report(args.runs, args.out)
    print(f"report: {path}")
    return 0
