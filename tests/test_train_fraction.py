"""`--train-fraction` (the paper's Figure 6): a seeded, label-blind, nested share of the training split only, a run
key of its own below 1 and the old keys at 1, its own description stage, and the figure's section of the page."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys

import pytest
import yaml

from latteclip.config import RunConfig, resolve_config, save_config
from latteclip.data import build_dataset
from latteclip.data.datasets import DatasetOptions, Sample
from latteclip.data.subsets import training_share
from latteclip.engine.schedule import epoch_steps
from latteclip.errors import LatteclipError
from latteclip.experiments.archive import RunArchive
from latteclip.experiments.jobs import same_config
from latteclip.experiments.paper_tables import comparison_tables
from latteclip.experiments.plan import load_plan
from tests.conftest import REPO

TINY = ["--model", "latte-tiny", "--pretrained", "random", "--device", "cpu", "--workers", "0"]


def _paths(dataset) -> list[str]:
    return [s.path for s in dataset.samples]


def test_a_share_keeps_the_same_nested_training_images_and_the_whole_test_split(eurosat_folder):
    def split(name: str, fraction: float, seed: int = 0):
        return build_dataset("eurosat", eurosat_folder, name, None, DatasetOptions(train_fraction=fraction, seed=seed))

    whole, quarter, half = split("train", 1.0), split("train", 0.25), split("train", 0.5)
    assert len(whole) == 120 and len(quarter) == 30 and len(half) == 60  # round(share * 120) of the 20 per class
    assert _paths(split("train", 0.25)) == _paths(quarter)  # seeded: the same images in every run
    assert set(_paths(quarter)) < set(_paths(half)) < set(_paths(whole))  # a smaller share is part of a larger one
    assert _paths(quarter) == [p for p in _paths(whole) if p in set(_paths(quarter))]  # in the split's order
    assert _paths(split("train", 0.25, seed=1)) != _paths(quarter)  # another seed, another draw
    assert _paths(split("test", 0.25)) == _paths(split("test", 1.0)) and len(split("test", 0.25)) == 60
    assert len(split("train", 0.001)) == 1  # never an empty training split


def test_the_share_is_drawn_without_reading_a_label():
    samples = [Sample(f"{i}.jpg", i % 3) for i in range(50)]
    relabelled = [Sample(s.path, 7 - s.label) for s in samples]
    assert _paths_of(training_share(samples, 0.2, 4)) == _paths_of(training_share(relabelled, 0.2, 4))
    assert len(training_share(samples, 0.2, 4)) == 10


def _paths_of(samples: list[Sample]) -> list[str]:
    return [s.path for s in samples]


def test_the_key_changes_only_below_one(tmp_path):
    default = resolve_config({"model": "latte-tiny"})
    assert "train_fraction" not in default.to_dict()  # the keys of runs saved before the option existed
    assert resolve_config({"model": "latte-tiny", "train_fraction": 1.0}).to_dict() == default.to_dict()
    share = resolve_config({"model": "latte-tiny", "train_fraction": 0.2})
    assert share.to_dict() == {**default.to_dict(), "train_fraction": 0.2}
    archive = RunArchive(tmp_path / "archive")
    assert "train_fraction" not in archive.key(default) and archive.key(share)["train_fraction"] == 0.2
    # a run folder saved before the option existed is still the same run; a share of it is another one
    config = dataclasses.replace(default, output=str(tmp_path), name="run")
    save_config(config, config.run_dir / "config.yaml")
    assert "train_fraction" not in yaml.safe_load((config.run_dir / "config.yaml").read_text())
    assert same_config(config) and not same_config(dataclasses.replace(config, train_fraction=0.2))
    assert RunConfig(**yaml.safe_load((config.run_dir / "config.yaml").read_text())).train_fraction == 1.0
    for bad in (0, 1.5):
        with pytest.raises(LatteclipError, match="--train-fraction"):
            resolve_config({"train_fraction": bad})


def test_a_share_counts_its_epochs_in_passes_not_the_authors_steps():
    config = resolve_config({"dataset": "eurosat"})
    assert epoch_steps(config) == 39  # the authors' loader on the whole EuroSAT split
    assert epoch_steps(dataclasses.replace(config, train_fraction=0.2)) is None


def test_figure_6_section_averages_the_datasets_and_puts_the_papers_drops_beside(tmp_path):
    plan = load_plan(
        "paper",
        tables=["fig6"],
        datasets=["eurosat", "dtd"],
        entries=["latteclip", "latteclip_f20", "latteclip_f1", "oracle", "oracle_f20"],
        data_root=str(tmp_path),
    )
    cells = {
        ("latteclip", "eurosat"): [0.80, 0.70],
        ("latteclip", "dtd"): [0.60],
        ("latteclip_f20", "eurosat"): [0.70],
        ("latteclip_f20", "dtd"): [0.50],
        ("latteclip_f1", "eurosat"): [0.40],  # dtd unfinished: no average yet
        ("oracle", "eurosat"): [0.90],
        ("oracle", "dtd"): [0.70],
        ("oracle_f20", "eurosat"): [0.85],
        ("oracle_f20", "dtd"): [0.65],
    }
    page = comparison_tables(plan, cells)
    assert "## Figure 6: training-data fractions (LatteCLIP and oracle)" in page
    assert "| share of training images | latteclip | drop | paper's drop | oracle | drop | paper's drop |" in page
    # latteclip 100%: (75 + 60) / 2 = 67.5; 20%: (70 + 50) / 2 = 60, drop 7.5 (the paper's 0.77); oracle 80, 75, 5
    assert "| 100% | 67.50 | 0.00 | – | 80.00 | 0.00 | – |" in page
    assert "| 20% | 60.00 | 7.50 | 0.77 | 75.00 | 5.00 | 7.28 |" in page
    assert "| 1% | – | – | 6.36 | – | – | 1.30 |" in page


@pytest.mark.slow
def test_paper_figure_6_on_eurosat_describes_the_kept_images_only_and_writes_the_section(eurosat_folder, tmp_path):
    select = [
        "paper",
        "--tables",
        "fig6",
        "--datasets",
        "eurosat",
        "--entries",
        "latteclip,latteclip_f20,oracle,oracle_f20",
        "--data-root",
        str(eurosat_folder),
        "--output",
        str(tmp_path / "runs"),
        "--lmm",
        "offline",
        "--max-steps",
        "2",
        *TINY,
    ]
    done = subprocess.run(
        [sys.executable, "-m", "latteclip", "experiment", "run", *select],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the share's stage asks about its 24 images only (20% of 120): their image texts are the whole split's, stored
    # already; its groups are drawn among them
    share_stage = done.stdout.split("groups of 4, 20% of the training images, seed 0")[1]
    assert "image: 24 images, 0 described now, 24 already stored" in share_stage
    assert "group: 24 images, 24 described now" in share_stage
    kept = build_dataset("eurosat", eurosat_folder, "train", None, DatasetOptions(train_fraction=0.2))
    read = json.loads((tmp_path / "runs" / "eurosat" / "latteclip_f20-s0" / "descriptions.json").read_text())
    assert (
        read["group"]["train_fraction"] == 0.2
        and "train_fraction"
        not in json.loads((tmp_path / "runs" / "eurosat" / "latteclip-s0" / "descriptions.json").read_text())["group"]
    )  # each run reads the groups drawn over its own images
    with sqlite3.connect(tmp_path / "runs" / "descriptions" / "eurosat-g4.sqlite") as db:
        members = db.execute(
            "SELECT d.image FROM set_members m JOIN descriptions d ON d.image_hash = m.image_hash AND d.kind = m.kind "
            "AND d.variant = m.variant WHERE m.set_name = ? AND m.kind = 'group'",
            (read["group"]["set"],),
        ).fetchall()
    assert sorted(row[0] for row in members) == sorted(_paths(kept))
    for entry in ("latteclip_f20", "oracle_f20"):
        saved = yaml.safe_load((tmp_path / "runs" / "eurosat" / f"{entry}-s0" / "config.yaml").read_text())
        assert saved["train_fraction"] == 0.2
        results = json.loads((tmp_path / "runs" / "eurosat" / f"{entry}-s0" / "results.json").read_text())
        assert results["test"]["n"] == 60  # the whole test split
    out = tmp_path / "page.md"
    tables = subprocess.run(
        [sys.executable, "-m", "latteclip", "experiment", "tables", *select, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tables.returncode == 0, tables.stdout + tables.stderr
    page = out.read_text()
    assert "## Figure 6: training-data fractions" in page and "| 20% | " in page and "| 100% | " in page
    assert "![Figure 6: top-1 against the share of training images](page-figure6.png)" in page
    assert (tmp_path / "page-figure6.png").read_bytes().startswith(b"\x89PNG")
