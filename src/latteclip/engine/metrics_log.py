"""The run's metric records: metrics.jsonl, and TensorBoard scalars when TensorBoard is installed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from latteclip import distributed


class MetricsLog:
    """metrics.jsonl (one JSON object per record) plus TensorBoard scalars when available; rank 0 only.

    `lines` counts the records written; a checkpoint stores it, and a resumed run keeps exactly
    that many lines, dropping what the killed run wrote after its last checkpoint (a half-written
    line, or the final evaluation of a run killed while finishing).
    """

    def __init__(self, run_dir: Path, resume_step: int | None, resume_lines: int = 0):
        self.enabled = distributed.is_main()
        self.lines = resume_lines
        if not self.enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            kept = self.path.read_text().splitlines()[:resume_lines]
        self.path.write_text("".join(ln + "\n" for ln in kept))
        self.lines = len(kept)
        self.handle = open(self.path, "a")  # noqa: SIM115  (open for the run, closed by close())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        except Exception:  # TensorBoard is optional: the JSON lines are the record
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        self.lines += 1
        if self.tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.handle.close()
        if self.tb is not None:
            self.tb.close()
