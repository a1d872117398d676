"""Contrastive pre-training, run once per configuration and cached as a weights file.

The weights land in `<cache>/pretrained/<model>-<dataset>-<key>.safetensors`, a plain OpenCLIP
state dict that any command takes as `--pretrained FILE`. The key (the recipe) hashes everything that
decides the weights (model config, training samples, optimisation), so a second call with the
same configuration returns the file at once. The run itself lives in `<cache>/pretrained/runs/<key>`
and resumes from its last checkpoint when a previous call was interrupted.

A record beside the weights (`.behaviour.json`) holds the recipe and what the weights compute (`behaviour`: the
zero-shot prediction and top score of fixed probe images), which the archive of finished runs compares instead of the
weights' bytes: those differ in the last bits between processors and thread counts (docs/domain_shift.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save as safetensors_bytes

from latteclip.config import NOT_IN_WEIGHTS_KEY, RunConfig
from latteclip.data import build_dataset
from latteclip.describe.clip_vocab import read_vocabulary
from latteclip.engine.checkpoint import load_checkpoint
from latteclip.engine.features import dataset_fingerprint, extract_features
from latteclip.engine.results import read_results
from latteclip.engine.session import dataset_options
from latteclip.engine.trainer import run_training
from latteclip.errors import LatteclipError
from latteclip.models import TokenCache, class_text_features, load_clip, register_project_configs
from latteclip.paths import atomic_write_bytes, cache_dir

PROBE_IMAGES = 1000  # class-balanced images of the recipe's test split whose zero-shot answers stand for the weights


@dataclass
class PretrainedWeights:
    path: Path
    cached: bool  # True when an earlier run made the file and nothing was trained now
    summary: dict[str, Any]  # the run's results: clean test accuracy, steps, timings, config


def pretrain_key(config: RunConfig) -> str:
    """A hash of what decides the pre-trained weights."""
    register_project_configs()
    decisive = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_WEIGHTS_KEY}
    decisive["model_config"] = open_clip.get_model_config(config.model)
    train_set = build_dataset(config.dataset, config.root, "train", None, dataset_options(config))
    decisive["train_samples"] = dataset_fingerprint(train_set)
    decisive["root"] = str(Path(config.root).resolve()) if Path(config.root).exists() else config.root
    if config.method_options.get("attribute_captions"):  # the words the captions are written from
        decisive["class_attributes"] = train_set.info.class_attributes
        decisive["vocabulary"] = read_vocabulary(None, config.dataset)[1]
    return hashlib.sha1(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_path(config: RunConfig, key: str) -> Path:
    return cache_dir() / "pretrained" / f"{config.model}-{config.dataset}-{key}.safetensors"


def pretrained_weights(config: RunConfig, force: bool = False) -> PretrainedWeights:
    """The weights of `config` (method `pretrain`): from the cache, or trained now and cached."""
    if config.method != "pretrain":
        raise LatteclipError(f"pre-training runs the method 'pretrain', not '{config.method}'")
    key = pretrain_key(config)
    weights = weights_path(config, key)
    summary_path = weights.with_suffix(".json")
    if weights.is_file() and summary_path.is_file() and not force:
        record_behaviour(config, key, weights)  # weights cached before the behaviour was recorded get it now
        return PretrainedWeights(weights, True, json.loads(summary_path.read_text()))
    run_dir = weights.parent / "runs" / key
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    final = run_dir / "final.pt"
    if final.is_file():
        results = read_results(run_dir)
    else:
        run = dataclasses.replace(config, output=str(run_dir.parent), name=key, resume=(run_dir / "last.pt").is_file())
        results = run_training(run)
    payload = load_checkpoint(final)
    state = {name: tensor.contiguous() for name, tensor in payload["model"].items()}
    atomic_write_bytes(weights, safetensors_bytes(state))
    summary = {
        "weights": str(weights),
        "run_dir": str(run_dir),
        "clean_test_top1": results["top1"],
        "steps": results["steps"],
        "timings": results["timings"],
        "config": config.to_dict(),
        "recipe": key,
    }
    atomic_write_bytes(summary_path, json.dumps(summary, indent=1).encode())
    record_behaviour(config, key, weights, force=True)
    return PretrainedWeights(weights, False, summary)


def behaviour_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".behaviour.json")


def record_behaviour(config: RunConfig, key: str, weights: Path, force: bool = False) -> None:
    """Write {"recipe": key, "behaviour": ...} beside the weights (`weights_behaviour`), unless already there."""
    path = behaviour_path(weights)
    if force or not path.is_file():
        record = {"recipe": key, "model": config.model, "behaviour": weights_behaviour(config, weights)}
        atomic_write_bytes(path, json.dumps(record).encode())


def recorded_behaviour(weights: Path) -> dict[str, Any] | None:
    """The recipe and behaviour recorded beside a pre-trained weights file (None for weights made elsewhere)."""
    path = behaviour_path(weights)
    return json.loads(path.read_text()) if path.is_file() else None


@torch.no_grad()
def weights_behaviour(config: RunConfig, weights: Path) -> dict[str, Any]:
    """What the weights compute: each probe image's zero-shot class and top cosine score (4 decimals).

    The probe is a fixed class-balanced subset of the recipe's test split, classified with the mean of the dataset's
    templates, on CPU in fp32.
    """
    loaded = load_clip(config.model, str(weights))
    loaded.model.eval()
    options = dataclasses.replace(dataset_options(config), limit=PROBE_IMAGES, seed=0)
    probe = build_dataset(config.dataset, config.root, "test", loaded.eval_transform(), options)
    features, _ = extract_features(
        lambda x: torch.nn.functional.normalize(loaded.model.encode_image(x), dim=-1),
        probe,
        torch.device("cpu"),
        desc="weights probe",
    )
    info = probe.info
    classes = class_text_features(loaded.model, TokenCache(loaded.tokenizer), info.classnames, info.templates)
    top = (features @ classes.t()).max(dim=-1)
    return {
        "probe": dataset_fingerprint(probe),
        "predictions": top.indices.tolist(),
        "scores": [round(score, 4) for score in top.values.tolist()],
    }
