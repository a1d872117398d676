"""What an experiment's training costs on a GPU: its steps (the authors' schedules) times the seconds of one step.

The steps of a run are those its trainer will plan (engine.schedule: the dataset's epochs and the authors' steps per
epoch, ReCLIP's own rule); the seconds of a step are measured on a GPU by benchmarks/train_step.py, never assumed
here: without a measurement `experiment status` prints the parts of the product instead of a figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from latteclip.config import RunConfig
from latteclip.data.subsets import share_count
from latteclip.engine.schedule import Schedule
from latteclip.errors import LatteclipError
from latteclip.methods import get_method


@dataclass(frozen=True)
class StepCost:
    seconds: float  # one training step
    source: str  # what measured it, for the printed line


def run_steps(config: RunConfig, train_images: int) -> int:
    """The training steps of one run on `train_images` images (0 for a method that does not train)."""
    method = get_method(config.method)
    if not method.trains:
        return 0
    images = share_count(min(train_images, config.limit) if config.limit else train_images, config.train_fraction)
    epochs = config.epochs if config.epochs is not None else method.default_epochs(images)
    return Schedule.for_run(config, images, epochs).total_steps


def gpu_hours(steps: int, cost: StepCost) -> float:
    return steps * cost.seconds / 3600


def step_cost(seconds: float | None = None, benchmark: str | None = None) -> StepCost | None:
    """`--step-seconds S`, or the LatteCLIP step of a JSON that `benchmarks/train_step.py --json` wrote on a GPU."""
    if seconds is not None:
        if seconds <= 0:
            raise LatteclipError(f"--step-seconds {seconds}: give the seconds of one training step (> 0)")
        return StepCost(seconds, "--step-seconds")
    if benchmark is None:
        return None
    path = Path(benchmark)
    try:
        data = json.loads(path.read_text())
        rows = {row["variant"]: row for row in data["rows"]}
        row = rows.get("latteclip") or rows[next(iter(rows), "latteclip")]  # no row: KeyError 'latteclip'
        args, seconds = data["args"], float(row["step_s"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LatteclipError(
            f"--step-benchmark {path} cannot be read ({err!r}): give the file `benchmarks/train_step.py --device cuda "
            "--json FILE` writes"
        ) from err
    if not str(args.get("device", "")).startswith("cuda"):
        raise LatteclipError(
            f"--step-benchmark {path} was measured on {args.get('device')}, not a GPU: GPU hours need "
            "`benchmarks/train_step.py --device cuda --json FILE` (or --step-seconds S)"
        )
    return StepCost(seconds, f"{args['model']}, batch {args['batch_size']}, {row['variant']} step on {data['device']}")
