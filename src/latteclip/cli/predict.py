"""`predict`: top-k classes of image files or folders with a trained checkpoint, as a table, CSV or JSON lines."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Sequence

from latteclip.cli import command
from latteclip.config import machine_cpus
from latteclip.errors import LatteclipError
from latteclip.paths import check_writable_file
from latteclip.values import at_least


def load_trained_method(checkpoint: str, device_name: str):
    """The method saved in a run's final.pt, rebuilt for inference on `device_name`."""
    from latteclip.engine.checkpoint import load_final_checkpoint
    from latteclip.engine.session import method_from_checkpoint, pick_device

    return method_from_checkpoint(load_final_checkpoint(checkpoint), pick_device(device_name))


def format_table(predictions: Sequence, top_k: int) -> str:
    """Aligned columns: the image, then class and score for each rank."""
    header = ["image"] + [cell for rank in range(1, top_k + 1) for cell in (f"top-{rank}", "score")]
    rows = [header]
    for p in predictions:
        if p.readable:
            rows.append([str(p.path)] + [cell for name, score in zip(p.classes, p.scores) for cell in (name, f"{score:.4f}")])
        else:
            rows.append([str(p.path), "(unreadable: skipped)"])
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows) + "\n"


def format_csv(predictions: Sequence) -> str:
    """One row per image: path, class, score, then class_2, score_2, ... for the rest of the top-k.

    An unreadable image keeps its row, with the class and scores left empty.
    """
    top_k = max((len(p.classes) for p in predictions), default=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "class", "score", *[f"{kind}_{rank}" for rank in range(2, top_k + 1) for kind in ("class", "score")]])
    for p in predictions:
        cells = [cell for name, score in zip(p.classes, p.scores) for cell in (name, f"{score:.6f}")]
        writer.writerow([str(p.path), *cells, *[""] * (2 * top_k - len(cells))])
    return buffer.getvalue()


def format_jsonl(predictions: Sequence) -> str:
    """One object per readable image: {"path", "top": [{"class", "score"}, ...]}."""
    return "".join(
        json.dumps({"path": str(p.path), "top": [{"class": n, "score": round(s, 6)} for n, s in zip(p.classes, p.scores)]}) + "\n"
        for p in predictions
        if p.readable
    )


@command("predict", "top-k classes of images (files or folders, recursive) with a trained checkpoint")
def _predict_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    parser.add_argument("--checkpoint", required=True, help="a run's final.pt")
    parser.add_argument("--top-k", dest="top_k", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--format", choices=["table", "csv", "jsonl"], default="table")
    parser.add_argument("--out", help="write to this file instead of standard output")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=machine_cpus(), help="data-loading worker processes")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")


@_predict_parser
def run_predict(args: argparse.Namespace) -> int:
    from latteclip.engine.predict import collect_images, predict_files

    at_least(args.top_k, 1, "--top-k")
    at_least(args.batch_size, 1, "--batch-size")
    at_least(args.workers, 0, "--workers")
    if args.out:
        check_writable_file(Path(args.out), "--out")
    files = collect_images(args.paths)
    method = load_trained_method(args.checkpoint, args.device)
    predictions = predict_files(method, files, args.top_k, args.batch_size, args.workers)
    unreadable = [p.path for p in predictions if not p.readable]
    if len(unreadable) == len(predictions):
        raise LatteclipError(f"none of the {len(files)} files could be read as an image (first: {files[0]}); nothing was written")
    if args.format == "table":
        text = format_table(predictions, min(args.top_k, method.info.num_classes))
    elif args.format == "csv":
        text = format_csv(predictions)
    else:
        text = format_jsonl(predictions)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    for path in unreadable:
        print(f"unreadable image skipped: {path}", file=sys.stderr)
    print(f"{len(predictions) - len(unreadable)} images classified, {len(unreadable)} unreadable skipped"
          + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    return 0
