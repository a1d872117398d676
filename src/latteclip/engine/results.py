"""What a finished run measured, `results.json`: one type, one writer, one reader for every producer and consumer.

Producers: the trainer (every method, zero-shot included), the LMM zero-shot baseline, and `adapt`'s scoring of
held-back images (engine.choice adds its scores). Consumers: the
experiments, pre-training's cache, the report, `adapt` and the command-line summary. The file is plain
JSON (never executed); a dict typed as `RunResults`, so existing readers index it as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from latteclip.errors import LatteclipError
from latteclip.paths import atomic_write_bytes

RESULTS_FILE = "results.json"


class _Required(TypedDict):
    method: str
    dataset: str
    model: str
    pretrained: str
    seed: int
    steps: int
    top1: float | None  # None: no labelled images (see `diagnostics`)
    test: dict[str, Any] | None  # engine.evaluate.accuracy_report
    unreadable_train_images: int
    unreadable_test_images: int
    timings: dict[str, float]


class RunResults(_Required, total=False):
    world_size: int
    reads_train_labels: bool
    evaluation: str  # "labelled" or "label-free"
    evaluated_on: str | None
    diagnostics: dict[str, Any] | None  # engine.diagnostics, runs without labels
    schedule: dict[str, int] | None  # the steps actually run
    precision: str  # the precision actually used (fp32, bf16, fp16): --precision auto differs by device
    device_type: str  # cpu, cuda, mps
    lmm: dict[str, Any]  # the LMM zero-shot baseline: backend, model, prompt, answer mapping
    label_free_scores: dict[str, float]  # `adapt`: engine.validation's scores on held-back images (engine.choice)
    holdout: dict[str, Any]  # `adapt`: the held-back images scored (count, digest) and each one's predicted class


REQUIRED = tuple(_Required.__annotations__)


def write_results(run_dir: Path, results: RunResults) -> Path:
    """Write a run's results atomically (a killed run never leaves half a file)."""
    missing = [key for key in REQUIRED if key not in results]
    if missing:
        raise ValueError(f"results of {run_dir} lack {', '.join(missing)}")
    path = Path(run_dir) / RESULTS_FILE
    atomic_write_bytes(path, json.dumps(results, indent=1).encode())
    return path


def computed_as(results: RunResults, precision: str, device_type: str) -> bool:
    """Whether a finished run computed in `precision` on this kind of device (`--precision auto` is bf16 on a GPU and
    fp32 on a CPU, so the same options can give other numbers). Results written before these keys count as such, as a
    `last.pt` of that age resumes."""
    return results.get("precision", precision) == precision and results.get("device_type", device_type) == device_type


def has_results(run_dir: Path) -> bool:
    return (Path(run_dir) / RESULTS_FILE).is_file()


def read_results(run_dir: Path) -> RunResults:
    """A finished run's results; a missing, damaged or foreign file is one clear error naming it."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise LatteclipError(
            f"{run_dir} has no {RESULTS_FILE}: it is not a finished run (finish it with `latteclip train --resume`)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LatteclipError(
            f"{path} cannot be read as run results ({err}); rerun the training that writes it"
        ) from err
    if not isinstance(data, dict) or any(key not in data for key in ("method", "top1", "steps")):
        raise LatteclipError(
            f"{path} is not a run's results (no method, top1 and steps); rerun the training that writes it"
        )
    return data
