"""Two CPU processes (gloo) with global batch B take the same steps as one process with batch B:
same losses, same prototypes, same weights, to float tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from latteclip.data import DatasetOptions, build_dataset
from latteclip.describe.store import DescriptionStore, image_key
from latteclip.engine.checkpoint import load_checkpoint
from tests.conftest import EUROSAT_ZIP

STEPS = 6


def _fill_store(path):
    train = build_dataset("eurosat", EUROSAT_ZIP, "train", None, DatasetOptions(limit=40))
    store = DescriptionStore(path)
    for i, sample in enumerate(train.samples):
        key = image_key(train.read_bytes(i))
        store.put(key, "image", "p", "t", "m", f"a tile of {train.info.classnames[sample.label]} number {i % 3}")
        store.put(key, "group", "g", "t", "m", f"tiles of {train.info.classnames[sample.label].split()[0]}")
    store.close()


def _train(tmp_path, name: str, nproc: int) -> tuple[list[float], dict]:
    args = ["train", "--method", "latteclip", "--dataset", "eurosat", "--root", str(EUROSAT_ZIP), "--model", "latte-tiny",
            "--pretrained", "random", "--limit", "40", "--batch-size", "8", "--max-steps", str(STEPS), "--eval-every", "0",
            "--log-every", "1", "--workers", "0", "--lr", "1e-4", "--store", str(tmp_path / "d.sqlite"),
            "--output", str(tmp_path), "--name", name, "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "latteclip", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    return losses, load_checkpoint(tmp_path / name / "final.pt")


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    _fill_store(tmp_path / "d.sqlite")
    single_losses, single = _train(tmp_path, "single", 1)
    multi_losses, multi = _train(tmp_path, "multi", 2)
    assert len(single_losses) == len(multi_losses) == STEPS
    assert torch.allclose(torch.tensor(single_losses), torch.tensor(multi_losses), atol=1e-4)
    p1 = single["method_state"]["prototypes"]["vectors"]
    p2 = multi["method_state"]["prototypes"]["vectors"]
    assert torch.allclose(p1, p2, atol=1e-5)
    for name, weight in single["model"].items():
        assert torch.allclose(weight, multi["model"][name], atol=1e-5), name
    results = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("single", "multi")}
    assert (results["single"]["world_size"], results["multi"]["world_size"]) == (1, 2)
    assert results["single"]["top1"] == results["multi"]["top1"]

