"""`export`: a trained checkpoint as plain OpenCLIP weights plus a classifier file and a README."""

from __future__ import annotations

import argparse
from pathlib import Path

from latteclip.cli import command


@command("export", "write a checkpoint as plain OpenCLIP weights + classifier (safetensors) + README")
def _export_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run's final.pt")
    parser.add_argument("--out", required=True, help="folder to write (created if needed)")


@_export_parser
def run_export(args: argparse.Namespace) -> int:
    from latteclip.cli.predict import load_trained_method
    from latteclip.engine.export import export_open_clip

    method = load_trained_method(args.checkpoint, "cpu")
    files = export_open_clip(method, Path(args.out))
    print(f"exported {files.arch} ({method.name}, {method.info.num_classes} classes) to {files.folder}: "
          f"{files.weights.name}, {files.classifier.name}, README.md")
    return 0
