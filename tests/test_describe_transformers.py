"""The `transformers` describer with a tiny randomly initialised LLaVA-NeXT built here, offline.

The model folder is benchmarks/tiny_llava.py's: a word-level tokenizer and the processor saved next to the model, so
the describer loads both from a folder exactly as it would a real model.
"""

from __future__ import annotations

import importlib.util
import threading

import pytest
import torch

from latteclip.data import build_dataset
from latteclip.describe.jobs import class_jobs, group_jobs, image_hashes, image_jobs
from latteclip.describe.prompts import load_prompts
from latteclip.describe.runner import Runner
from latteclip.describe.store import DescriptionStore
from tests.conftest import REPO

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    """The tiny random LLaVA-NeXT of benchmarks/tiny_llava.py, which the GPU check builds the same way."""
    spec = importlib.util.spec_from_file_location("tiny_llava", REPO / "benchmarks" / "tiny_llava.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_llava(tmp_path_factory.mktemp("tiny-llava-next"))


@pytest.fixture(scope="module")
def describer(tiny_llava):
    from latteclip.describe.hf_local import TransformersDescriber

    return TransformersDescriber(tiny_llava, "cpu", batch_size=4)


@pytest.fixture(scope="module")
def train(eurosat_folder):
    return build_dataset("eurosat", eurosat_folder, "train")


def test_prompt_goes_through_the_chat_template(describer):
    assert describer.conversation("Describe the land use.") == "USER: <image> Describe the land use. ASSISTANT:"
    assert describer.model.startswith("tiny-llava-next")  # a local folder is named by its last part


def test_batched_answers_equal_one_by_one_answers(describer, train):
    hashes = image_hashes(train, progress=False)
    prompt = load_prompts().description("image", "land use")
    requests = [job.build() for job in image_jobs(train, hashes, lambda i: prompt)[::15][:4]]
    stop = threading.Event()
    batched = describer.describe(requests, stop)
    assert all(isinstance(text, str) and text for text in batched)
    assert batched == [describer.describe([r], stop)[0] for r in requests]
    assert len(set(batched)) > 1  # different images get different answers


def test_runner_describes_images_and_collages_in_batches(describer, train, tmp_path):
    hashes = image_hashes(train, progress=False)
    prompts = load_prompts()
    subset = list(range(0, len(train), 10))  # 12 images
    groups = [
        [subset[(subset.index(i) + k) % len(subset)] for k in (1, 2, 3)] if i in subset else None
        for i in range(len(train))
    ]
    jobs = image_jobs(train, hashes, lambda i: prompts.description("image", "land use"))
    jobs += group_jobs(train, hashes, groups, lambda i: prompts.description("group", "land use"), draw="test")
    jobs = [j for j in jobs if j.image in {train.samples[i].path for i in subset}]
    store = DescriptionStore(tmp_path / "d.sqlite")
    summary = Runner(describer, store, "eurosat", progress=False).run(jobs)
    assert summary.complete, summary.lines()
    assert summary.counts["image"].done == 12 and summary.counts["group"].done == 12
    texts = store.get_texts([hashes[i] for i in subset], "group", model=describer.model)
    assert all(texts)
    again = Runner(describer, store, "eurosat", progress=False).run(jobs)
    assert again.counts["image"].cached == 12 and again.counts["group"].cached == 12


def test_text_only_class_questions_go_without_a_picture_in_mixed_batches(describer, train):
    assert describer.conversation("What does forest look like?", with_image=False) == (
        "USER: What does forest look like? ASSISTANT:"
    )
    prompts = load_prompts()
    questions = [
        job.build() for job in class_jobs(["forest", "river"], lambda n: prompts.class_questions(n, "land use"))
    ]
    hashes = image_hashes(train, progress=False)
    pictured = [job.build() for job in image_jobs(train, hashes, lambda i: "Describe the land use.")[:2]]
    stop = threading.Event()
    alone = describer.describe(questions, stop)
    assert len(alone) == 10 and all(isinstance(text, str) and text for text in alone)
    mixed = describer.describe([pictured[0], *questions[:3], pictured[1]], stop)  # the runner may batch kinds together
    assert mixed[1:4] == alone[:3] and mixed[0] == describer.describe(pictured[:1], stop)[0]


@pytest.mark.parametrize(
    "version, keyword", [("4.45.0", "torch_dtype"), ("4.55.4", "torch_dtype"), ("4.56.0", "dtype"), ("5.25.0", "dtype")]
)
def test_the_dtype_keyword_follows_the_installed_transformers(version, keyword):
    from latteclip.describe.hf_local import dtype_argument

    assert dtype_argument(version) == keyword


def test_weights_load_straight_onto_the_device(tiny_llava, monkeypatch):
    """`device_map` places each weight as it is read, instead of the whole model in CPU memory and then a copy."""
    from transformers import AutoModelForImageTextToText

    from latteclip.describe.hf_local import TransformersDescriber

    asked: list[dict] = []
    load = AutoModelForImageTextToText.from_pretrained

    def recorded(*args, **kwargs):
        asked.append(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", recorded)
    describer = TransformersDescriber(tiny_llava, "cpu")
    keyword = "dtype" if tuple(map(int, transformers.__version__.split(".")[:2])) >= (4, 56) else "torch_dtype"
    assert asked == [{"device_map": {"": torch.device("cpu")}, keyword: torch.float32}]
    assert describer.lmm.dtype == torch.float32 and describer.lmm.device == torch.device("cpu")


class LockedUse:
    """The real processor, recording for each use whether the describer's processor lock was held."""

    def __init__(self, processor, lock: threading.Lock):
        self.processor, self.lock, self.unlocked = processor, lock, []

    def __call__(self, *args, **kwargs):
        self.unlocked.append("__call__") if not self.lock.locked() else None
        return self.processor(*args, **kwargs)

    def __getattr__(self, name):
        attribute = getattr(self.processor, name)
        if name in ("apply_chat_template", "batch_decode") and not self.lock.locked():
            self.unlocked.append(name)
        return attribute


def test_concurrent_batches_use_the_processor_under_its_lock(describer, train):
    hashes = image_hashes(train, progress=False)
    prompt = load_prompts().description("image", "land use")
    requests = [job.build() for job in image_jobs(train, hashes, lambda i: prompt)[::10][:6]]
    stop = threading.Event()
    alone = [describer.describe(requests[i : i + 2], stop) for i in (0, 2, 4)]
    spy = LockedUse(describer.processor, describer._processor_lock)
    describer.processor = spy
    try:
        results: dict[int, list] = {}

        def run(i: int) -> None:
            results[i] = describer.describe(requests[i : i + 2], stop)

        threads = [threading.Thread(target=run, args=(i,)) for i in (0, 2, 4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        describer.processor = spy.processor
    assert spy.unlocked == []
    assert [results[i] for i in (0, 2, 4)] == alone
