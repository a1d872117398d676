"""`latteclip experiment run|status|tables`: the paper's experiment file, its checks, the page, resume after kill -9,
and the same tables through a real local Slurm as through the local launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latteclip.cli import main
from latteclip.experiments.paper_tables import comparison_tables
from latteclip.experiments.plan import load_plan
from latteclip.experiments.published import published_figure_6, published_tables
from tests.conftest import REPO, copy_scenes
from tests.test_launch import local_slurm  # noqa: F401  (the fixture that starts the local Slurm)

TINY = ["--model", "latte-tiny", "--pretrained", "random", "--max-steps", "3", "--device", "cpu", "--workers", "0"]


def test_paper_file_lists_the_papers_rows_and_tables():
    plan = load_plan("paper")
    assert plan.datasets[:3] == ["eurosat", "sun397", "food101"] and len(plan.datasets) == 10
    published = published_tables()
    for entry in plan.entries:  # every published row an entry names exists in the transcription
        for number, key in entry.tables.items():
            assert key is None or number == "fig6" or published[number].row(*key)
    figure_6 = load_plan("paper", tables=["fig6"], datasets=["eurosat"])
    shares = {(e.tables["fig6"][0], r.config.train_fraction) for e, r in zip(figure_6.entries, figure_6.runs())}
    assert {method for method, _ in shares} == set(published_figure_6())  # the methods the paper's text names
    assert {share for _, share in shares} == {0.01, 0.05, 0.1, 0.2, 0.5, 1.0}
    table_5 = load_plan("paper", tables=["5"])
    assert [e.name for e in table_5.entries] == ["latteclip", "group_2", "group_8", "group_16"]
    assert len(table_5.runs()) == 40  # ten datasets, four entries, one seed
    table_1 = load_plan("paper", tables=["1"], datasets=["eurosat"], seeds=[0, 1])
    assert [e.name for e in table_1.entries] == [
        "zeroshot",
        "lmm_zeroshot",
        "reclip",
        "flyp_pl",
        "latteclip",
        "oracle",
        "coft",
        "coft_plus",
    ]
    assert table_1.runs()[1].config.run_dir == Path("runs/paper/eurosat/zeroshot-s1").resolve()


def test_status_counts_descriptions_from_the_split_sizes(capsys):
    assert main(["experiment", "status", "paper", "--datasets", "eurosat", "--tables", "5"]) == 0
    out = capsys.readouterr().out
    # EuroSAT's CoOp training split: 13,500 images; per group size an image text each plus one group text per group
    descriptions = 4 * 13500 + 13500 // 2 + 13500 // 4 + -(-13500 // 8) + -(-13500 // 16)
    assert descriptions == 66657
    assert f"plan: 4 runs, 4 description stages, {descriptions} descriptions: 22.2 LMM hours" in out
    assert "0 done, 4 remain (4 missing)" in out


def test_a_missing_dataset_is_one_line_naming_the_download(tmp_path, capsys):
    code = main(
        [
            "experiment",
            "run",
            "paper",
            "--datasets",
            "dtd",
            "--entries",
            "zeroshot",
            "--data-root",
            str(tmp_path),
            "--output",
            str(tmp_path / "runs"),
            *TINY,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"latteclip data download dtd --root {tmp_path}" in err and "--datasets" in err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_page_puts_our_mean_and_spread_beside_the_papers(tmp_path):
    plan = load_plan(
        "paper", tables=["1"], datasets=["dtd", "eurosat"], entries=["latteclip", "coft"], data_root=str(tmp_path)
    )
    cells = {("latteclip", "eurosat"): [0.50, 0.70], ("latteclip", "dtd"): [0.60], ("coft", "eurosat"): [0.25]}
    page = comparison_tables(plan, cells)
    assert "| method | average | eurosat | dtd |" in page  # the paper's column order, not the file's
    # eurosat: mean 60, sample std 14.14; dtd 60 against 56.26; average of the columns 60 against (80.27 + 56.26) / 2
    paper_average = (80.27 + 56.26) / 2
    average = f"60.00 / {paper_average:.2f} ({60 - paper_average:+.2f})"
    assert f"| LATTECLIP | {average} | 60.00 ± 14.14 / 80.27 (-20.27) | 60.00 / 56.26 (+3.74) |" in page
    assert "| CoFT | – | 25.00 | – |" in page  # a row the paper does not print: ours only


def test_a_failed_run_is_recorded_in_its_folder_and_named_by_status(tmp_path, capsys):
    from latteclip.experiments.jobs import run_job, run_state
    from latteclip.experiments.orchestrate import job_of

    tiny = {"model": "latte-tiny", "pretrained": "random", "device": "cpu"}
    plan = load_plan(
        "paper",
        datasets=["eurosat"],
        entries=["zeroshot"],
        data_root=str(tmp_path / "gone"),
        output=str(tmp_path / "runs"),
        run=tiny,
    )
    run = plan.runs()[0]
    with pytest.raises(Exception, match="does not exist"):
        run_job(job_of(plan, run).payload)
    state = run_state(run.config)
    assert state.state == "failed" and state.message.startswith("LatteclipError: ")
    assert "does not exist" in state.message
    assert not (run.config.run_dir / "started.json").exists()
    assert (
        main(
            [
                "experiment",
                "status",
                "paper",
                "--datasets",
                "eurosat",
                "--entries",
                "zeroshot,flyp_pl",
                "--output",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"failed       eurosat/zeroshot-s0: {state.message}" in out and "missing      eurosat/flyp_pl-s0" in out
    assert "0 done, 2 remain (1 failed, 1 missing)" in out


def test_domain_shift_file_is_the_benchmark_with_the_archived_pre_training():
    from latteclip.experiments.plan import load_shift_experiment
    from latteclip.experiments.spec import load_experiment, package_experiment_file

    shifts = load_shift_experiment("domain-shift")
    benchmark = load_experiment(package_experiment_file("demo"), "benchmark")
    assert [e.name for e in shifts.methods] == [e.name for e in benchmark.methods] and shifts.choose
    assert (shifts.shifts, shifts.seeds, shifts.run) == (benchmark.shifts, benchmark.seeds, benchmark.run)
    # the four-epoch recipe of the archived runs (the demo pre-trains two epochs at a doubled rate)
    assert shifts.pretrain["epochs"] == 4 and shifts.pretrain["lr"] == 1.0e-3 and benchmark.pretrain["epochs"] == 2
    narrowed = load_shift_experiment("demo", shifts=["rotation"], entries=["zeroshot"], run={"max_steps": 3})
    assert narrowed.shifts == ["rotation"] and [e.name for e in narrowed.methods] == ["zeroshot"]
    assert narrowed.run["max_steps"] == 3 and not narrowed.choose


def _experiment(args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "latteclip", "experiment", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def _page(args: list[str], out: Path) -> str:
    assert main(["experiment", "tables", *args, "--out", str(out)]) == 0
    return out.read_text()


@pytest.mark.slow
def test_paper_on_eurosat_finishes_and_resumes_after_kill_9(eurosat_folder, tmp_path):
    """The issue's command: three entries on EuroSAT; killed in the middle, a second run redoes nothing finished."""
    select = [
        "paper",
        "--datasets",
        "eurosat",
        "--entries",
        "zeroshot,flyp_pl,latteclip",
        "--seeds",
        "0",
        "--data-root",
        str(eurosat_folder),
        "--lmm",
        "offline",
        *TINY,
    ]
    whole = tmp_path / "whole"
    done = _experiment(["run", *select, "--output", str(whole)])
    out, _ = done.communicate(timeout=900)
    assert done.returncode == 0, out
    page = _page([*select, "--output", str(whole)], whole / "paper.md")
    assert "## Table 1: main results" in page and "| method | average | eurosat |" in page
    assert " / 80.27 (" in page and " / 42.95 (" in page and " / 67.12 (" in page  # LatteCLIP, CLIP, FLYP + PL

    killed = tmp_path / "killed"
    first = _experiment(["run", *select, "--output", str(killed)], start_new_session=True)
    zero_shot = killed / "eurosat" / "zeroshot-s0" / "results.json"
    deadline = time.time() + 600
    while not zero_shot.is_file() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the experiment and its job, mid-way
    first.wait()
    assert zero_shot.is_file()
    finished_before = {p: p.stat().st_mtime_ns for p in killed.glob("eurosat/*/results.json")}
    second = _experiment(["run", *select, "--output", str(killed)])
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished_before.items())  # nothing finished redone
    assert _page([*select, "--output", str(killed)], killed / "paper.md") == page
    assert main(["experiment", "status", *select, "--output", str(killed)]) == 0


@pytest.mark.slow
def test_slurm_gives_the_tables_of_the_local_launcher(eurosat_folder, tmp_path, local_slurm):
    """Two datasets (EuroSAT, three of its classes as a folder dataset), two entries: local with two CPU 'devices'
    at once, and a Slurm job array, give the same page."""
    scenes = copy_scenes(eurosat_folder, tmp_path / "scenes", per_class=10)
    experiment = tmp_path / "two.yaml"
    experiment.write_text(f"""
datasets: [eurosat, {{name: scenes, dataset: folder, root: {scenes}}}]
tables: {{"1": main results}}
entries:
  - {{name: zeroshot, method: zeroshot, label: Pre-trained CLIP, tables: {{"1": ["Pre-trained CLIP"]}}}}
  - {{name: flyp_pl, method: flyp_pl, label: FLYP + pseudo-label, tables: {{"1": ["FLYP + pseudo-label"]}}}}
""")
    select = [str(experiment), "--data-root", str(eurosat_folder), *TINY]
    local = _experiment(["run", *select, "--output", str(tmp_path / "local"), "--devices", "cpu,cpu"])
    out, _ = local.communicate(timeout=900)
    assert local.returncode == 0, out
    events = [line.split()[0] for line in out.splitlines() if line.startswith(("started ", "finished "))]
    assert events[:2] == ["started", "started"]  # two devices: the second run started before the first finished
    slurm = _experiment(
        [
            "run",
            *select,
            "--output",
            str(tmp_path / "slurm"),
            "--launcher",
            "slurm",
            "--slurm-cpus",
            "1",
            "--slurm-time",
            "20",
            "--slurm-array-parallelism",
            "2",
        ]
    )
    out, _ = slurm.communicate(timeout=900)
    assert slurm.returncode == 0, out
    assert "Slurm array" in out
    local_page = _page([*select, "--output", str(tmp_path / "local")], tmp_path / "local.md")
    zero_shot_row = local_page.split("| Pre-trained CLIP |")[1].split("\n")[0]
    assert "–" not in zero_shot_row  # both datasets measured
    assert _page([*select, "--output", str(tmp_path / "slurm")], tmp_path / "slurm.md") == local_page
