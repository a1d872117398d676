"""Two CPU processes (gloo) with global batch B take the same steps as one process with batch B:
same losses, same prototypes, same weights, to float tolerance; and ranks that take different paths
(unreadable images, unused branches, a cache only some see) still meet in every collective."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from latteclip.data import DatasetOptions, build_dataset
from latteclip.describe.store import DescriptionStore, image_key
from latteclip.engine.checkpoint import load_checkpoint
from tests.conftest import EUROSAT_ZIP, copy_scenes, tiny_run_argv

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
    schedule = {"batch_size": 8, "max_steps": STEPS, "eval_every": 0, "log_every": 1, "lr": "1e-4"}
    args = tiny_run_argv("latteclip", tmp_path, name, device=None, **schedule, store=tmp_path / "d.sqlite", nproc=nproc)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "latteclip", *args], env=env, capture_output=True, text=True, timeout=300
    )
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


def test_workers_are_shared_by_the_processes_of_a_machine(monkeypatch):
    from latteclip import distributed

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc-per-node 4
    assert [distributed.workers_per_process(w) for w in (0, 2, 8, 10)] == [0, 1, 2, 2]
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert distributed.workers_per_process(8) == 8


# --- collectives never diverge: each case fails (with a timeout) instead of hanging when ranks take different paths ---

COLLECTIVE_TIMEOUT = timedelta(seconds=60)  # a rank left waiting raises after this, and the test fails


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _join_group(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=COLLECTIVE_TIMEOUT)


def _spawn_two(worker, *args) -> None:
    """Run `worker(rank, port, *args)` in two gloo processes; an exception in either fails the test."""
    mp.start_processes(worker, args=(_free_port(), *args), nprocs=2, start_method="spawn", join=True)


def _gradient_worker(rank: int, port: int, out: Path) -> None:
    from latteclip import distributed

    _join_group(rank, port)
    shared, first_only, unused = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    sync = distributed.GradientSync([shared, first_only, unused], bucket_bytes=8)  # a bucket per tensor
    seen = []
    for same_graph in (True, False):
        loss = (shared * (1.0 + 2 * rank)).sum()  # gradient 1 on rank 0, 3 on rank 1
        if rank == 0 or same_graph:
            loss = loss + (first_only * 4.0).sum()  # a branch only rank 0's batch goes through, in the second step
        shared.grad = first_only.grad = None
        sync.start(loss)
        loss.backward()
        sync.finish()
        seen.append([shared.grad.tolist(), first_only.grad.tolist(), unused.grad is None, sync.overlap])
    (out / f"{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def test_ranks_with_different_gradient_sets_average_the_same_tensors(tmp_path):
    _spawn_two(_gradient_worker, tmp_path)
    for rank in (0, 1):
        # the mean over ranks, a missing gradient counting as zero; a tensor no rank trained keeps no gradient;
        # buckets overlap the backward pass when the ranks' graphs reach the same tensors, and start after it otherwise
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == [
            [[2.0] * 3, [4.0] * 3, True, True],
            [[2.0] * 3, [2.0] * 3, True, False],
        ]


def _cache_worker(rank: int, port: int, out: Path) -> None:
    from torchvision import transforms

    from latteclip.engine.features import extract_features

    os.environ["LATTECLIP_CACHE"] = str(out / f"cache{rank}")  # a node-local cache: only rank 0's holds the entry
    _join_group(rank, port)
    transform = transforms.Compose([transforms.Resize((4, 4)), transforms.ToTensor()])
    dataset = build_dataset("eurosat", EUROSAT_ZIP, "train", transform, DatasetOptions(limit=6))
    features, valid = extract_features(lambda x: x.flatten(1), dataset, torch.device("cpu"), 4, 0, cache_key="test")
    (out / f"{rank}.json").write_text(json.dumps([features.tolist(), valid.tolist()]))
    dist.destroy_process_group()


def test_a_feature_cache_only_some_ranks_see_is_not_read_by_any(tmp_path, monkeypatch):
    from torchvision import transforms

    from latteclip.engine.features import extract_features

    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "cache0"))
    transform = transforms.Compose([transforms.Resize((4, 4)), transforms.ToTensor()])
    dataset = build_dataset("eurosat", EUROSAT_ZIP, "train", transform, DatasetOptions(limit=6))
    features, valid = extract_features(lambda x: x.flatten(1), dataset, torch.device("cpu"), 4, 0, cache_key="test")
    assert len(list((tmp_path / "cache0").rglob("*.safetensors"))) == 1
    _spawn_two(_cache_worker, tmp_path)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == [features.tolist(), valid.tolist()]


@pytest.mark.slow
def test_a_rank_whose_slice_is_all_unreadable_skips_the_step_with_the_others(eurosat_folder, tmp_path):
    from latteclip.engine.schedule import epoch_batches

    root = copy_scenes(eurosat_folder, tmp_path / "scenes", 6)
    train = build_dataset("folder", root, "train")
    first_batch = epoch_batches(len(train), 4, 0, 0)[0]
    for index in first_batch[2:]:  # rank 1's half of step 1: nothing it can read
        (root / train.samples[index].path).write_bytes(b"\x00garbage, not a JPEG")
    folder = {"dataset": "folder", "root": root, "limit": None}
    schedule = {"batch_size": 4, "max_steps": 2, "eval_every": 0, "log_every": 1}
    args = tiny_run_argv("flyp_pl", tmp_path, "run", **folder, **schedule, nproc=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, "-m", "latteclip", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks
        process.communicate()
        pytest.fail("the ranks hung: one skipped the step while the other waited in a collective")
    assert process.returncode == 0, stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2]  # step 1 skipped by both ranks, step 2 taken
    assert json.loads((tmp_path / "run" / "results.json").read_text())["unreadable_train_images"] == 2
