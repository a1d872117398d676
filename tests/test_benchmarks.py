"""The train-step benchmark still runs end to end (timings are not asserted: they belong to benchmarks/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_train_step_benchmark_runs_both_variants(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--model", "latte-tiny", "--batch-size", "8",
         "--warmup", "0", "--steps", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "speed-up of the fast LatteCLIP step" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["latteclip", "latteclip_reference"]
    assert all(r["step_s"] > 0 and r["peak_mb"] > 0 for r in rows)
