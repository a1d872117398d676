"""`predict`: top-k classes of image files or folders with a trained checkpoint, as a table, CSV or JSON lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latteclip.cli import command
from latteclip.config import machine_cpus
from latteclip.paths import check_writable_file


@command("predict", "top-k classes of images (files or folders, recursive) with a trained checkpoint")
def _predict_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    parser.add_argument("--checkpoint", required=True, help="a run's final.pt")
    parser.add_argument("--top-k", dest="top_k", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--format", choices=["table", "csv", "jsonl"], default="table")
    parser.add_argument("--out", help="write to this file instead of standard output")
    parser.add_argument("--overwrite", action="store_true", help="replace the --out file when it exists")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=machine_cpus(), help="data-loading worker processes")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")


@_predict_parser
def run_predict(args: argparse.Namespace) -> int:
    from latteclip import api
    from latteclip.config import Inference
    from latteclip.engine.predict import format_csv, format_jsonl, format_table

    if args.out:
        check_writable_file(Path(args.out), "--out", args.overwrite)
    inference = Inference(args.device, args.batch_size, args.workers)
    predictions = api.predict(args.checkpoint, args.paths, args.top_k, inference)
    if args.format == "table":
        text = format_table(predictions, max(len(p.classes) for p in predictions))
    else:
        text = (format_csv if args.format == "csv" else format_jsonl)(predictions)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    unreadable = [p.path for p in predictions if not p.readable]
    for path in unreadable:
        print(f"unreadable image skipped: {path}", file=sys.stderr)
    print(
        f"{len(predictions) - len(unreadable)} images classified, {len(unreadable)} unreadable skipped"
        + (f" -> {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0
