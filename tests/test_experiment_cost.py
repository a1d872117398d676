"""`experiment status`'s GPU hours: the runs' training steps from the authors' schedules times the measured seconds
of one step, checked against a hand count; without a GPU measurement it prints the parts, never a figure."""

from __future__ import annotations

import json

from latteclip.cli import main

EUROSAT = ["experiment", "status", "paper", "--datasets", "eurosat", "--entries", "zeroshot,latteclip,reclip"]
# EuroSAT's CoOp split: 13,500 train + 5,400 val = 18,900 training images.
# LatteCLIP: 15 epochs of the authors' 39 steps = 585. ReCLIP: min(100, 18900 // 5000 + 2) = 5 epochs of
# floor(18900 / 64) = 295 batches = 1475. Zero-shot trains nothing. 585 + 1475 = 2060 steps.
STEPS = 15 * 39 + min(100, 18900 // 5000 + 2) * (18900 // 64)
PARTS = "GPU: 2060 training steps (the authors' schedules; evaluation and descriptions not counted)"


def gpu_line(capsys) -> str:
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("GPU: "))


def test_gpu_hours_are_the_scheduled_steps_times_the_given_seconds(capsys):
    assert STEPS == 2060
    assert main([*EUROSAT, "--step-seconds", "0.5"]) == 0
    assert gpu_line(capsys) == f"{PARTS} x 0.5 s a step (--step-seconds) = 0.29 GPU hours"  # 2060 x 0.5 / 3600


def test_the_seconds_come_from_the_step_benchmarks_json(tmp_path, capsys):
    benchmark = tmp_path / "step.json"
    benchmark.write_text(
        json.dumps(
            {
                "args": {"model": "ViT-B-32", "batch_size": 512, "device": "cuda"},
                "device": "NVIDIA H100 80GB HBM3",
                "rows": [{"variant": "flyp_pl", "step_s": 9.0}, {"variant": "latteclip", "step_s": 1.8}],
            }
        )
    )
    assert main([*EUROSAT, "--step-benchmark", str(benchmark)]) == 0
    assert gpu_line(capsys) == (
        f"{PARTS} x 1.8 s a step (ViT-B-32, batch 512, latteclip step on NVIDIA H100 80GB HBM3) = 1.03 GPU hours"
    )  # 2060 x 1.8 / 3600


def test_without_a_gpu_measurement_the_parts_are_printed(capsys):
    assert main(EUROSAT) == 0
    line = gpu_line(capsys)
    assert line.startswith(f"{PARTS} x the seconds of one step / 3600 = GPU hours; the seconds need a GPU measurement")
    assert "hours" in line and not any(ch.isdigit() for ch in line.split("/ 3600")[1].split("--batch-size")[0])


def test_a_cpu_measurement_is_refused_before_any_work(tmp_path, capsys):
    benchmark = tmp_path / "cpu.json"
    cpu = {"args": {"model": "ViT-B-32", "batch_size": 64, "device": "cpu"}, "device": "AMD EPYC, 2 cores"}
    benchmark.write_text(json.dumps({**cpu, "rows": [{"variant": "latteclip", "step_s": 20.0}]}))
    assert main([*EUROSAT, "--step-benchmark", str(benchmark)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert f"--step-benchmark {benchmark}" in captured.err and "not a GPU" in captured.err
