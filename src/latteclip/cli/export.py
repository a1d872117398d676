"""`export`: a trained checkpoint as plain OpenCLIP weights plus a classifier file and a README."""

from __future__ import annotations

import argparse
from pathlib import Path

from latteclip.cli import command
from latteclip.errors import LatteclipError
from latteclip.paths import check_writable_folder


@command("export", "write a checkpoint as plain OpenCLIP weights + classifier (safetensors) + README")
def _export_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run's final.pt")
    parser.add_argument("--out", required=True, help="folder to write (created if needed; a non-empty one needs --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export in --out")


@_export_parser
def run_export(args: argparse.Namespace) -> int:
    from latteclip.cli.predict import load_trained_method
    from latteclip.engine.export import export_open_clip

    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise LatteclipError(f"--out {out} is not empty; pass --overwrite to replace what it holds, or another folder")
    if not out.is_dir():
        check_writable_folder(out, "--out")
    method = load_trained_method(args.checkpoint, "cpu")
    files = export_open_clip(method, out)
    print(f"exported {files.arch} ({method.name}, {method.info.num_classes} classes) to {files.folder}: "
          f"{files.weights.name}, {files.classifier.name}, {files.benchmark_classifier.name}, README.md")
    return 0
