"""`export`: a trained checkpoint as plain OpenCLIP weights plus a classifier file and a README."""

from __future__ import annotations

import argparse

from latteclip.cli import command


@command("export", "write a checkpoint as plain OpenCLIP weights + classifier (safetensors) + README")
def _export_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run's final.pt")
    parser.add_argument(
        "--out", required=True, help="folder to write (created if needed; a non-empty one needs --overwrite)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export in --out")


@_export_parser
def run_export(args: argparse.Namespace) -> int:
    from latteclip import api

    done = api.export(args.checkpoint, args.out, args.overwrite)
    files = done.files
    print(
        f"exported {files.arch} ({done.method}, {done.classes} classes) to {files.folder}: "
        f"{files.weights.name}, {files.classifier.name}, {files.benchmark_classifier.name}, README.md"
    )
    return 0
