"""Did a refactor change what training computes? Top-1 and a hash of the final weights of a tiny run per method.

    python benchmarks/refactor_check.py --save before.json          # on the commit before the refactor
    python benchmarks/refactor_check.py --compare before.json       # after it: exit 1 on any difference

Each training method (flyp_pl, oracle, latteclip, reclip, coft, coft_plus) trains the tiny model
(latte-tiny, random weights) for a few steps on 40 EuroSAT images from the archive beside the
checkout, on CPU with one thread and workers 0 (or --workers), with evaluation, logging and checkpoints on. The
hash covers every tensor of final.pt's model weights and method state (prototypes, adapters) in key
order, so equal hashes mean bit-identical results. The description store the LMM methods read is
written here with fixed texts.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LATTECLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
EUROSAT_ZIP = SHARED_DATA / "eurosat" / "EuroSAT.zip"
METHODS = ("flyp_pl", "oracle", "latteclip", "reclip", "coft", "coft_plus")
# each method's own flags: enough steps for its phases and refreshes to happen at least once
METHOD_FLAGS = {
    "flyp_pl": [],
    "oracle": [],
    "latteclip": [],
    "reclip": ["--refresh-every", "2", "--lp-neighbors", "5"],
    "coft": ["--phase1-fraction", "0.5", "--clean-warmup-fraction", "0.25"],
    "coft_plus": ["--rounds", "2", "--phase1-fraction", "0.5", "--clean-warmup-fraction", "0.25", "--queue-size", "12"],
}


def write_store(path: Path, limit: int) -> None:
    """Image, group and class descriptions for every training image (fixed texts, so runs are comparable)."""
    from latteclip.data import DatasetOptions, build_dataset
    from latteclip.describe.store import DescriptionStore, image_key

    train = build_dataset("eurosat", EUROSAT_ZIP, "train", None, DatasetOptions(limit=limit))
    store = DescriptionStore(path)
    for i in range(len(train.samples)):
        key = image_key(train.read_bytes(i))
        store.put(key, "image", "p", "check", "m", f"a satellite tile with {['fields', 'roads', 'water'][i % 3]}")
        store.put(key, "group", "g", "check", "m", "tiles with fields and roads")
        store.put(key, "class", "c", "check", "m", f"land seen from orbit, kind {i % 4}")
    store.close()


def weights_hash(checkpoint: dict[str, Any]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor of the weights and the method state."""
    digest = hashlib.sha256()

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{prefix}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                visit(f"{prefix}.{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(f"{prefix}[{i}]", item)
        else:  # counters and flags of the method state count too
            digest.update(f"{prefix}={value!r}".encode())

    visit("model", checkpoint["model"])
    visit("method_state", checkpoint.get("method_state", {}))
    return digest.hexdigest()


def run_method(method: str, output: Path, store: Path, steps: int, workers: int) -> dict[str, Any]:
    from latteclip.cli import main
    from latteclip.engine.checkpoint import load_checkpoint

    # the tests build such argv with tests/conftest.py's tiny_run_argv; a benchmark does not import the tests
    argv = [
        "train",
        "--method",
        method,
        "--dataset",
        "eurosat",
        "--root",
        str(EUROSAT_ZIP),
        "--limit",
        "40",
        "--model",
        "latte-tiny",
        "--pretrained",
        "random",
        "--device",
        "cpu",
        "--workers",
        str(workers),
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--max-steps",
        str(steps),
        "--eval-every",
        "3",
        "--log-every",
        "1",
        "--checkpoint-every",
        "2",
        "--output",
        str(output),
        "--name",
        method,
        *METHOD_FLAGS[method],
    ]
    if method in ("latteclip", "coft_plus"):
        argv += ["--store", str(store)]
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars: the table below is the output
        code = main(argv)
    if code != 0:
        raise SystemExit(f"{method}: training failed ({' '.join(argv)})")
    results = json.loads((output / method / "results.json").read_text())
    return {"top1": results["top1"], "sha256": weights_hash(load_checkpoint(output / method / "final.pt"))}


def compare(rows: dict[str, dict], saved: dict[str, dict]) -> bool:
    same = True
    for method, row in rows.items():
        before = saved.get(method)
        verdict = (
            "missing in the saved file"
            if before is None
            else ("same" if before == row else f"DIFFERENT (was {before})")
        )
        same = same and verdict == "same"
        print(f"{method:<10} {verdict}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--workers", type=int, default=0, help="loader workers (1: the worker processes' paths are compared too)"
    )
    parser.add_argument("--save", type=Path, help="write the per-method results to this JSON file")
    parser.add_argument(
        "--compare", type=Path, help="compare with a JSON file written by --save (exit 1 if any differs)"
    )
    args = parser.parse_args()
    if not EUROSAT_ZIP.is_file():
        raise SystemExit(
            f"{EUROSAT_ZIP} not found: set LATTECLIP_SHARED_DATA to the folder holding eurosat/EuroSAT.zip"
        )
    torch.set_num_threads(1)  # results depend on the thread count: one thread is the same everywhere
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LATTECLIP_CACHE"] = str(Path(tmp) / "cache")  # never reuse a feature cache from elsewhere
        store = Path(tmp) / "descriptions.sqlite"
        write_store(store, 40)
        for method in args.methods.split(","):
            rows[method] = run_method(method, Path(tmp) / "runs", store, args.steps, args.workers)
            print(f"{method:<10} top1 {rows[method]['top1']:.4f}  weights {rows[method]['sha256']}", flush=True)
    if args.save:
        args.save.write_text(json.dumps(rows, indent=1) + "\n")
    if args.compare and not compare(rows, json.loads(args.compare.read_text())):
        sys.exit(1)


if __name__ == "__main__":
    main()
