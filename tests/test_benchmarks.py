"""The train-step benchmark still runs end to end (timings are not asserted: they belong to benchmarks/), and the
zero-shot signal analysis counts right (its AUC by hand) and refuses to read labels unasked."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


@pytest.mark.slow
def test_train_step_benchmark_runs_both_variants(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train_step.py"),
            "--model",
            "latte-tiny",
            "--batch-size",
            "8",
            "--warmup",
            "0",
            "--steps",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "speed-up of the fast LatteCLIP step" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["latteclip", "latteclip_reference"]
    assert all(r["step_s"] > 0 and r["peak_mb"] > 0 for r in rows)


def _zero_shot_signal():
    spec = importlib.util.spec_from_file_location("zero_shot_signal", REPO / "benchmarks" / "zero_shot_signal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_margin_auc_counts_wins_and_half_ties():
    """Right labels' margins 0.9 and 0.5 against wrong ones' 0.1 and 0.5: three wins and one tie of four pairs."""
    margin = torch.tensor([0.9, 0.1, 0.5, 0.5])
    right = torch.tensor([True, False, True, False])
    assert _zero_shot_signal().margin_auc(margin, right) == pytest.approx(3.5 / 4)
    assert _zero_shot_signal().margin_auc(-margin, right) == pytest.approx(0.5 / 4)


def test_zero_shot_signal_refuses_without_reads_labels():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "zero_shot_signal.py"), "--pretrained", "unused.safetensors"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert done.returncode == 2
    assert "--reads-labels" in done.stderr
