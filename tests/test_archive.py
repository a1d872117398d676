"""The archive of finished runs binds pre-trained weights by their recipe and what they compute, not by their bytes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latteclip.config import resolve_config
from latteclip.experiments.archive import ADDED_FIELDS, RunArchive, same_behaviour, upgraded_key

RECIPE = {
    "method": "pretrain",
    "dataset": "fmnist",
    "root": "bundled",
    "limit": 256,
    "epochs": 1,
    "batch_size": 32,
    "warmup_steps": 1,
    "workers": 0,
}
PRETRAIN = """import json, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from latteclip.config import resolve_config
from latteclip.engine.pretraining import pretrained_weights
print(pretrained_weights(resolve_config(json.loads(sys.argv[1]))).path)
"""


def behaviour(predictions: list[int], scores: list[float], probe: str = "p") -> dict:
    return {"probe": probe, "predictions": predictions, "scores": scores}


def test_behaviours_agree_up_to_two_percent_of_predictions_and_half_a_hundredth_of_score():
    reference = behaviour([i % 10 for i in range(1000)], [0.5] * 1000)
    twenty = behaviour([(i + (i < 20)) % 10 for i in range(1000)], [0.5] * 1000)  # 2.0% of the classes differ
    assert same_behaviour(reference, twenty) == (
        True,
        "2.0% of 1000 probe predictions differ, mean top-score difference 0.0000",
    )
    assert not same_behaviour(reference, behaviour([(i + (i < 21)) % 10 for i in range(1000)], [0.5] * 1000))[0]
    assert same_behaviour(reference, behaviour(reference["predictions"], [0.505] * 1000))[0]
    assert not same_behaviour(reference, behaviour(reference["predictions"], [0.5] * 500 + [0.512] * 500))[
        0
    ]  # mean 0.006
    assert same_behaviour(reference, behaviour(reference["predictions"], [0.5] * 1000, probe="q")) == (
        False,
        "other probe images",
    )


def pretrain(cache: Path, threads: int, capability: str | None, **changes) -> Path:
    """Pre-train in a process of its own: the CPU capability is read once, when torch loads."""
    env = {**os.environ, "LATTECLIP_CACHE": str(cache)}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run(
        [sys.executable, "-c", PRETRAIN, json.dumps({**RECIPE, **changes}), str(threads)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return Path(done.stdout.strip().splitlines()[-1])


def run_config(weights: Path, tmp_path: Path):
    return resolve_config(
        {
            "method": "flyp_pl",
            "dataset": "fmnist-tint",
            "root": "bundled",
            "model": "latte-fmnist",
            "pretrained": str(weights),
            "output": str(tmp_path / "runs"),
            "name": "tint/flyp_pl-s0",
        }
    )


@pytest.mark.slow
def test_pretrainings_that_differ_by_rounding_share_the_archive_and_a_changed_recipe_does_not(tmp_path):
    here = pretrain(tmp_path / "one-thread-scalar", 1, "default")  # the scalar kernels, one thread
    there = pretrain(tmp_path / "two-threads-best", 2, None)  # this machine's widest vectors, two threads
    assert here.name == there.name  # the same recipe ...
    assert hashlib.sha256(here.read_bytes()).digest() != hashlib.sha256(there.read_bytes()).digest()  # ... other bytes

    archive = RunArchive(tmp_path / "archive")
    assert archive.bind({"source": here}) == []
    archive.put(run_config(here, tmp_path), {"top1": 0.5}, {"top1": 0.5})
    references = list((tmp_path / "archive" / "weights").glob("*.json"))
    assert len(references) == 1 and json.loads(references[0].read_text())["recipe"] in here.name

    elsewhere = RunArchive(tmp_path / "archive")
    assert elsewhere.bind({"source": there}) == []
    assert elsewhere.get(run_config(there, tmp_path))["results"] == {"top1": 0.5}

    changed = pretrain(tmp_path / "changed", 1, None, lr=5e-4)
    other = RunArchive(tmp_path / "archive")
    notes = other.bind({"source": changed})
    assert len(notes) == 1 and "1 archived runs" in notes[0] and "not reused" in notes[0]
    assert other.get(run_config(changed, tmp_path)) is None


def test_weights_that_compute_other_answers_under_the_same_recipe_are_not_bound(tmp_path):
    """A code change keeps the recipe but changes what the weights compute: the archive refuses them, and says so."""
    weights = {}
    for name, shift in (("made-here", 0), ("changed-code", 3)):
        path = tmp_path / name / "latte-fmnist-fmnist-abc.safetensors"
        path.parent.mkdir()
        path.write_bytes(name.encode())
        record = {
            "recipe": "abc",
            "model": "latte-fmnist",
            "behaviour": behaviour([(i + shift * (i < 30)) % 10 for i in range(1000)], [0.5] * 1000),
        }
        path.with_suffix(".behaviour.json").write_text(json.dumps(record))
        weights[name] = path
    archive = RunArchive(tmp_path / "archive")
    archive.bind({"source": weights["made-here"]})
    archive.put(run_config(weights["made-here"], tmp_path), {"top1": 0.5}, {"top1": 0.5})
    other = RunArchive(tmp_path / "archive")
    notes = other.bind({"source": weights["changed-code"]})
    assert "3.0% of 1000 probe predictions differ" in notes[0] and "more than rounding" in notes[0]
    assert other.get(run_config(weights["changed-code"], tmp_path)) is None


def test_runs_bound_to_weight_bytes_before_are_kept_and_named_as_made_from_other_weights(tmp_path):
    folder = tmp_path / "archive" / "rotation"
    folder.mkdir(parents=True)
    old_key = {"experiment_weights": {"source": "c2" * 32, "describer": "15" * 32}}
    (folder / "flyp_pl-s0.json").write_text(json.dumps({"key": old_key, "results": {"top1": 0.4}, "summary": {}}))
    weights = tmp_path / "source.safetensors"
    weights.write_bytes(b"weights")
    notes = RunArchive(tmp_path / "archive").bind({"source": weights})
    assert (
        len(notes) == 1 and notes[0].startswith("1 archived runs") and "bound to those weights files' bytes" in notes[0]
    )
    assert json.loads((folder / "flyp_pl-s0.json").read_text())["results"] == {"top1": 0.4}  # still readable


def test_entries_bound_to_these_weights_bytes_are_rebound_and_read_in_todays_terms(tmp_path):
    """Entries archived before behaviour binding, new run options and full method options: bound to the very bytes of
    the weights here, they are rewritten bound to what the weights compute, and match only the configuration that
    computes what they did (the options added since at their earlier behaviour)."""
    weights = tmp_path / "latte-fmnist-fmnist-abc.safetensors"
    weights.write_bytes(b"the source weights")
    record = {
        "recipe": "abc",
        "model": "latte-fmnist",
        "behaviour": behaviour([i % 10 for i in range(100)], [0.5] * 100),
    }
    weights.with_suffix(".behaviour.json").write_text(json.dumps(record))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()

    def latteclip(**options):
        values = {
            "method": "latteclip",
            "dataset": "fmnist-tint",
            "root": "bundled",
            "model": "latte-fmnist",
            "pretrained": str(weights),
            "output": str(tmp_path / "runs"),
            "name": "tint/latteclip-s0",
            "method_options": {"texts": ["class"], "described_by": "clip-vocab:x", **options},
        }
        return resolve_config(values)

    today = RunArchive(tmp_path / "today")
    today.bind({"source": weights})
    old_key = {k: v for k, v in today.key(latteclip()).items() if k not in ADDED_FIELDS}
    old_key |= {
        "experiment_weights": {"source": digest},
        "pretrained": f"sha256:{digest}",
        "method_options": {"texts": ["class"], "describer_model": "clip-vocab:x"},  # as keys were: given options only
    }
    folder = tmp_path / "archive"
    (folder / "tint").mkdir(parents=True)
    (folder / "tint" / "latteclip-s0.json").write_text(json.dumps({"key": old_key, "results": {"top1": 0.4}}))

    archive = RunArchive(folder)
    notes = archive.bind({"source": weights})
    assert notes == [
        f"1 archived runs in {folder} were bound to the bytes of these weights files; they are now bound to what "
        "the weights compute (weights/), so that other machines reuse them"
    ]
    rewritten = json.loads((folder / "tint" / "latteclip-s0.json").read_text())["key"]
    assert rewritten["experiment_weights"] == archive.weights and rewritten["pretrained"] == archive.weights["source"]
    assert archive.weights["source"].startswith("abc-") and (folder / "weights").is_dir()
    assert archive.get(latteclip(mixer_prototypes="current"))["results"] == {"top1": 0.4}  # what it computed
    assert archive.get(latteclip()) is None  # today's default, the start-of-epoch snapshot, is another run
    assert upgraded_key(old_key)["lr_schedule"] == "cosine" and upgraded_key(old_key)["authors_steps_per_epoch"] is None
