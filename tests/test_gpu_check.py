"""benchmarks/gpu_check.sh: its page section from the steps' JSON (a GPU run's figures, written by hand here), the
whole script on CPU with --quick, and a run where every step fails (cuda asked on this CPU machine): each failure
reported with its log, the others still run, the page still written."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA

OTHER = "# Measured results\n\n<!-- other:start -->\n## Another benchmark\n\nkept as it is\n<!-- other:end -->\n"
ENVIRONMENT = {
    "cpu": "Intel Xeon",
    "cores": 16,
    "torch_threads": 16,
    "torch": "2.11.0+cu130",
    "python": "3.12.3",
    "gpu": "NVIDIA H100 80GB HBM3",
    "device": "cuda",
    "device_name": "NVIDIA H100 80GB HBM3",
    "gpu_memory_gib": 79.19,
    "cuda": "13.0",
    "cudnn": 91002,
    "transformers": "5.17.0",
    "open_clip": "3.3.0",
    "commit": "abc1234",
    "quick": False,
    "eurosat_images": {"train": 5000, "test": 3000},
    "started": "2026-12-07 10:00 UTC",
}


def step(name: str, code: int, wall: float, limit: int, command: str, tail: list[str] | None = None) -> dict:
    return {"name": name, "exit_code": code, "wall_s": wall, "limit_s": limit, "command": command, "log_tail": tail}


def gpu_run(folder: Path) -> None:
    """The JSON a GPU run leaves, its compile step timed out."""
    records = {
        "environment": ENVIRONMENT,
        "steps": {
            "command": "bash benchmarks/gpu_check.sh PAGE.md",
            "total_wall_s": 250.0,
            "steps": [
                step("environment", 0, 4.2, 60, "python benchmarks/gpu_check.py environment"),
                step("train_step_bf16", 0, 61.0, 150, "python benchmarks/train_step.py --device cuda"),
                step("experiment", 0, 84.8, 240, "python -m latteclip experiment run paper"),
                step("train_step_compile", 124, 100.0, 100, "python benchmarks/train_step.py --compile", ["compiling"]),
            ],
        },
        "train_step_bf16": {
            "args": {"model": "ViT-B-32", "batch_size": 512, "device": "cuda", "bf16": True, "steps": 10, "warmup": 2},
            "device": "NVIDIA H100 80GB HBM3",
            "rows": [{"variant": "latteclip", "step_s": 0.21234, "images_per_s": 2411.2, "peak_mb": 20480.4}],
        },
        "grad_sync": {
            "args": {"nproc": 1, "device": "cuda", "batch_size": 256},
            "buckets": "25 MB buckets",
            "when": "during the backward pass",
            "step_s": 0.1,
            "wait_s": 0.002,
            "parameters": 151277313,
        },
        "experiment": {
            "runs": [
                {
                    "run": "eurosat/latteclip-s0",
                    "method": "latteclip",
                    "top1": 0.1037,
                    "steps": 200,
                    "precision": "bf16",
                    "device_type": "cuda",
                    "timings": {"zero_shot_labels_s": 3.04, "setup_s": 20.5, "total_s": 95.31},
                }
            ],
            "tables": "# Table 1: main results\n\n| method | eurosat |\n|---|---|\n"
            "| LATTECLIP | 10.37 / 80.27 (-69.90) |\n",
        },
        "describer": {
            "images": 64,
            "texts": {"image": 64, "group": 16},
            "wall_s": 12.5,
            "texts_per_s": 6.4,
            "dtype": "bfloat16",
        },
    }
    for name, record in records.items():
        (folder / f"{name}.json").write_text(json.dumps(record))


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # results_page sits beside it
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section(page: str) -> str:
    return page.split("<!-- gpu_check:start -->", 1)[1].split("<!-- gpu_check:end -->", 1)[0]


def test_the_section_shows_a_gpu_runs_figures_and_its_failed_step(gpu_check, tmp_path):
    gpu_run(tmp_path)
    page = tmp_path / "results.md"
    page.write_text(OTHER)
    gpu_check.write_page(tmp_path, page)
    gpu_check.write_page(tmp_path, page)  # written again: replaced, not added
    text = page.read_text()
    assert text.count("<!-- gpu_check:start -->") == 1 and text.startswith(OTHER.rstrip())
    lines = section(text).splitlines()
    assert lines[1] == "## GPU check: NVIDIA H100 80GB HBM3"
    assert lines[3] == "Command: `bash benchmarks/gpu_check.sh PAGE.md`  "
    assert lines[4] == (
        "Machine: NVIDIA H100 80GB HBM3 (79 GiB), Intel Xeon, 16 cores; Python 3.12.3, torch 2.11.0+cu130, CUDA 13.0, "
        "cuDNN 91002; transformers 5.17.0, open_clip 3.3.0; commit abc1234"
    )
    expected = [
        "Started 2026-12-07 10:00 UTC; 4 steps in 250 s.",
        "| train step, bf16 | ok | 61.0 | `python benchmarks/train_step.py --device cuda` |",
        "| train step, bf16, torch.compile | timed out (100 s) | 100.0 | `python benchmarks/train_step.py --compile` |",
        "### Training step, bf16 autocast",
        "| latteclip | 0.2123 | 2411.2 | 20480 |",
        "| 1 x cuda | 256 | 151.3 | 25 MB buckets, all-reduced during the backward pass | 0.1000 | 0.0020 (2.0%) |",
        "EuroSAT images read: 5000 training (train + val) and 3000 test. Random weights: the accuracies are near "
        "chance (10 classes); what this shows is that the runs finish on the device, and how long they take.",
        "| eurosat/latteclip-s0 | 10.37 | 200 | 3.0 | 20.5 | 95.3 | bf16 on cuda |",
        "**Table 1: main results**",
        "| LATTECLIP | 10.37 / 80.27 (-69.90) |",
        "| 64 | 64 | 16 | 12.5 | 6.4 | bfloat16 |",
        "Last lines of the log of train step, bf16, torch.compile:",
    ]
    for line in expected:
        assert line in lines
    compiled = lines.index("### Training step, torch.compile")
    assert lines[compiled + 2] == "Not measured: the step failed or did not run (the table above)."
    assert lines[-3:] == ["```", "compiling", "```"]


def test_a_run_without_its_environment_still_shows_its_steps(gpu_check, tmp_path):
    gpu_run(tmp_path)
    (tmp_path / "environment.json").unlink()
    page = tmp_path / "results.md"
    gpu_check.write_page(tmp_path, page)
    lines = section(page.read_text()).splitlines()
    assert lines[1] == "## GPU check: device not recorded"
    assert "| train step, bf16 | ok | 61.0 | `python benchmarks/train_step.py --device cuda` |" in lines


def run_check(tmp_path: Path, device: str, budget: int) -> tuple[subprocess.CompletedProcess, str, Path]:
    """The script with --quick on a copy of docs/results.md; the real page is never written."""
    page = tmp_path / "results.md"
    real = (REPO / "docs" / "results.md").read_text()
    page.write_text(real)
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": device,
        "GPU_CHECK_DATA": str(SHARED_DATA),
        "GPU_CHECK_BUDGET": str(budget),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--quick", "--work", str(tmp_path / "work"), str(page)],
        capture_output=True,
        text=True,
        env=env,
        timeout=budget + 120,
    )
    assert (REPO / "docs" / "results.md").read_text() == real
    text = page.read_text()
    assert without_section(text) == without_section(real)  # the rest of the page as it was
    return done, section(text), tmp_path / "work" / "json"


def without_section(page: str) -> str:
    if "<!-- gpu_check:start -->" not in page:
        return page.strip()
    before, rest = page.split("<!-- gpu_check:start -->", 1)
    return (before.rstrip() + "\n" + rest.split("<!-- gpu_check:end -->", 1)[1].lstrip()).strip()


@pytest.mark.slow
def test_the_quick_check_runs_every_step_on_cpu(tmp_path):
    done, text, json_dir = run_check(tmp_path, "cpu", 1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = text.splitlines()
    assert lines[1] == "## GPU check: cpu (--quick)"
    statuses = [line.split(" | ")[1] for line in lines if line.startswith("| ") and line.endswith("` |")]
    assert statuses == ["ok"] * 7 + ["not run (--quick)"]
    runs = {run["run"]: run for run in json.loads((json_dir / "experiment.json").read_text())["runs"]}
    assert runs["eurosat/latteclip-s0"]["steps"] == 3 and runs["eurosat/zeroshot-s0"]["steps"] == 0
    assert any(line.startswith("| LATTECLIP | ") and "/ 80.27 (" in line for line in lines)  # the paper's value
    assert json.loads((json_dir / "describer.json").read_text())["texts"] == {"image": 8, "group": 8}
    bench = json.loads((json_dir / "train_step_bf16.json").read_text())
    assert [r["variant"] for r in bench["rows"]] == ["latteclip", "latteclip_reference", "flyp_pl"]


@pytest.mark.slow
def test_without_a_gpu_the_failed_first_step_is_reported_and_no_other_starts(tmp_path):
    """cuda asked on a machine without one: the first step fails with its log, the others are not started (each would
    only fail slowly), and the page is still written."""
    done, text, _ = run_check(tmp_path, "cuda", 600)
    assert done.returncode == 1
    lines = text.splitlines()
    assert lines[1] == "## GPU check: device not recorded"
    rows = [line.split(" | ")[:2] for line in lines if line.startswith("| ") and line.endswith("` |")]
    status = {title.removeprefix("| "): state for title, state in rows}
    assert len(status) == 8 and status["train step, bf16, torch.compile"] == "not run (--quick)"
    assert status.pop("device and versions") == "failed (3)"
    assert set(status.values()) == {"not run (no device)", "not run (--quick)"}
    steps = "environment train_step_bf16 grad_sync describer experiment experiment_tables experiment_results"
    assert f"steps failed or not run: {steps} " in done.stdout
    assert "Last lines of the log of device and versions:" in lines
    assert "GPU check: --device cuda but torch sees no GPU (GPU_CHECK_DEVICE=cpu for the CPU run)" in lines
