"""What a first GPU run would meet, shown on the CPU.

Pseudo-labels under bf16 autocast, the device under torchrun, what `--precision auto` picks, feature-cache keys.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from latteclip.config import resolve_config
from latteclip.engine.evaluate import autocast_for_precision
from latteclip.engine.features import extract_features, feature_cache_key
from latteclip.engine.session import open_session, pick_device, resolve_precision
from latteclip.errors import LatteclipError
from latteclip.methods.base import TrainContext
from tests.conftest import TINY_MODEL


def session_of(root: str, method: str, **options):
    config = resolve_config(
        {"method": method, "dataset": "eurosat", "root": root, "limit": 20, **TINY_MODEL, "method_options": options}
    )
    return open_session(config)


def near_ties(weights: torch.Tensor) -> torch.Tensor:
    """Unit features halfway between each pair of class vectors, nudged by 1e-4 towards the second.

    fp32 tells the two cosines apart; bf16 (steps of about 0.004 near 1) rounds many of them together,
    and argmax then takes the lower class.
    """
    weights = F.normalize(weights.float(), dim=-1)
    rows = [
        weights[a] + weights[b] + 1e-4 * (weights[b] - weights[a])
        for a in range(len(weights))
        for b in range(a + 1, len(weights))
    ]
    return F.normalize(torch.stack(rows), dim=-1)


def bf16_flips(features: torch.Tensor, weights: torch.Tensor) -> int:
    """How many rows a plain bf16 product labels differently from fp32: the case really has near ties."""
    fp32 = (features @ weights.t()).argmax(dim=1)
    return int(((features.bfloat16() @ weights.bfloat16().t()).argmax(dim=1) != fp32).sum())


def test_coft_labels_under_bf16_autocast_equal_the_fp32_labels(eurosat_zip):
    method = session_of(str(eurosat_zip.parent), "coft").method
    with torch.no_grad():
        positive = method.prompt_features()[0]
        frozen, vision = near_ties(positive), near_ties(method.vision_pair()[0]).roll(7, dims=0)
        assert bf16_flips(frozen, positive) > 5
        round_labels = torch.arange(len(frozen)) % method.info.num_classes
        expected = method.choose(round_labels, frozen, vision)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = method.choose(round_labels, frozen, vision)
    for want, have in zip(expected, got):
        assert torch.equal(want, have)


def test_coft_round_zero_labels_under_bf16_autocast_equal_the_fp32_labels(eurosat_zip, tmp_path):
    method = session_of(str(eurosat_zip.parent), "coft").method
    method.ctx = TrainContext(None, None, tmp_path, 0)
    with torch.no_grad():
        classifier = method.zero_shot_classifier()
    method.frozen = near_ties(classifier)
    method.readable = torch.ones(len(method.frozen), dtype=torch.bool)
    assert bf16_flips(method.frozen, classifier) > 5
    method.start_round(0, 0)
    expected, method.pseudo_labels = method.pseudo_labels, None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        method.start_round(0, 0)
    assert torch.equal(method.pseudo_labels, expected)


def test_flyp_current_labels_under_bf16_autocast_equal_the_fp32_labels(eurosat_zip):
    method = session_of(str(eurosat_zip.parent), "flyp_pl", pseudo_labels="current").method
    assert not method.needs_zero_shot_labels
    with torch.no_grad():
        classifier = method.classifier()
        features = near_ties(classifier)
        assert bf16_flips(features, classifier) > 5
        expected = method.labels_for({}, features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = method.labels_for({}, features)
    assert torch.equal(expected, got)


# --- device under torchrun (item 3) ------------------------------------------------------------------------------
@pytest.fixture
def four_gpus(monkeypatch):
    """A node with 4 GPUs, as far as torch.cuda's availability and count say (nothing else is mocked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def torchrun(monkeypatch, local_rank: int, world_size: int) -> None:
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))


@pytest.mark.parametrize("name", ["auto", "cuda", "cuda:2"])
def test_under_torchrun_each_process_takes_its_local_ranks_gpu(four_gpus, monkeypatch, name):
    torchrun(monkeypatch, local_rank=2, world_size=4)
    assert pick_device(name) == torch.device("cuda", 2)


def test_under_torchrun_another_gpu_index_is_refused_in_one_line(four_gpus, monkeypatch):
    torchrun(monkeypatch, local_rank=1, world_size=4)
    one_line = r"^--device cuda:0 contradicts torchrun's LOCAL_RANK=1: [^\n]*CUDA_VISIBLE_DEVICES$"
    with pytest.raises(LatteclipError, match=one_line):
        pick_device("cuda:0")


def test_more_processes_than_gpus_is_refused(four_gpus, monkeypatch):
    torchrun(monkeypatch, local_rank=5, world_size=8)
    with pytest.raises(LatteclipError, match="LOCAL_RANK=5 has no GPU: this node shows 4"):
        pick_device("cuda")


def test_without_torchrun_the_named_gpu_is_used(four_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pick_device("cuda:3") == torch.device("cuda", 3)
    torchrun(monkeypatch, local_rank=0, world_size=1)  # torchrun with one process: no other rank to collide with
    assert pick_device("cuda:3") == torch.device("cuda", 3)


def test_cpu_and_bad_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torchrun(monkeypatch, local_rank=1, world_size=2)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    with pytest.raises(LatteclipError, match="shows no CUDA GPU"):
        pick_device("cuda")
    with pytest.raises(LatteclipError, match="--device gpu0 is not a device"):
        pick_device("gpu0")


# --- what `--precision auto` computes in (item 9) ---------------------------------------------------------------
@pytest.fixture
def gpu_of_capability(monkeypatch):
    """Mock only the CUDA device's compute capability (7.0 = V100, 7.5 = T4, 8.0 = A100, 9.0 = H100)."""

    def set_major(major: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=major))

    return set_major


@pytest.mark.parametrize("major, auto", [(7, "fp32"), (8, "bf16"), (9, "bf16")])
def test_auto_is_bf16_only_where_the_gpu_does_it_natively(gpu_of_capability, major, auto):
    gpu_of_capability(major)
    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", cuda) == auto
    # asked for by name: honoured
    assert resolve_precision("bf16", cuda) == "bf16" and resolve_precision("fp16", cuda) == "fp16"
    assert resolve_precision("fp32", cuda) == "fp32"
    context = autocast_for_precision("auto", cuda)
    if auto == "fp32":
        assert isinstance(context, contextlib.nullcontext)
    else:
        assert context.fast_dtype == torch.bfloat16 and context.device == "cuda"


def test_the_cpu_always_computes_in_fp32(gpu_of_capability):
    gpu_of_capability(9)
    for precision in ("auto", "bf16", "fp16", "fp32"):
        assert resolve_precision(precision, torch.device("cpu")) == "fp32"
        assert isinstance(autocast_for_precision(precision, torch.device("cpu")), contextlib.nullcontext)


# --- the feature cache knows the device type and precision (item 2, cache part) ---------------------------------
def test_feature_cache_key_changes_with_precision_and_device(eurosat_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "cache"))
    session = session_of(str(eurosat_zip.parent), "zeroshot")
    data, cpu = session.dataset("test"), torch.device("cpu")
    keys = {
        "cpu fp32": feature_cache_key("w", data, cpu),
        "cuda fp32": feature_cache_key("w", data, torch.device("cuda")),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        keys["cpu bf16"] = feature_cache_key("w", data, cpu)
    assert len(set(keys.values())) == 3

    encode = session.method.encode_images
    fp32, _ = extract_features(encode, data, cpu, 64, 0, cache_key="w")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # not the fp32 entry read back: its own pass, its own entry
        bf16, _ = extract_features(encode, data, cpu, 64, 0, cache_key="w")
    assert not torch.equal(fp32, bf16) and torch.allclose(fp32, bf16, atol=0.05)
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 2
    again, _ = extract_features(lambda images: 1 / 0, data, cpu, 64, 0, cache_key="w")  # read back, not recomputed
    assert torch.equal(again, fp32)
