"""The `openai` describer against a real third-party server: Hugging Face `transformers serve` (the `serving`
extra of the test dependencies) serving the tiny random LLaVA-NeXT folder that the in-process tests build.

Its answers must equal the in-process `transformers` backend's on the same folder and images: the request
body we send by default is one it accepts (it refuses fields outside the OpenAI schema with HTTP 422, and
model ids other than the one it was started with), and greedy decoding makes both paths deterministic.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from latteclip.cli import main
from latteclip.data import DatasetOptions, build_dataset
from latteclip.describe.backend import Request
from latteclip.describe.hf_local import TransformersDescriber
from latteclip.describe.jobs import image_hashes, image_jobs
from latteclip.describe.prompts import load_prompts
from latteclip.describe.store import DescriptionStore
from tests.test_describe_transformers import tiny_llava  # noqa: F401  (the model folder fixture)

pytest.importorskip("fastapi", reason="transformers serve needs the serving extra: pip install 'transformers[serving]'")
SERVE = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
IMAGES = 6  # per split: the server answers one request at a time on CPU


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_llava):
    """(base URL, model id) of `transformers serve` on a free local port; stopped by its PID afterwards."""
    if SERVE is None:
        pytest.skip("no transformers command")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(Path(tiny_llava).parent / "serve.log", "w")  # noqa: SIM115  (the server writes it; closed below)
    process = subprocess.Popen(
        [
            SERVE,
            "serve",
            tiny_llava,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"transformers serve did not come up: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1", tiny_llava
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(
        url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_transformers_serve_rejects_fields_outside_the_openai_schema(served):
    url, model = served
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0}
    assert post(url, body) == 200
    assert post(url, {**body, "latteclip_extra": 1}) == 422


def test_describe_and_lmm_zeroshot_through_transformers_serve_equal_the_in_process_model(
    served, eurosat_folder, tmp_path
):
    url, model = served
    store = tmp_path / "served.sqlite"
    common = [
        "--dataset",
        "eurosat",
        "--root",
        str(eurosat_folder),
        "--limit",
        str(IMAGES),
        "--lmm",
        "openai",
        "--lmm-url",
        url,
        "--store",
        str(store),
        "--lmm-timeout",
        "60",
    ]
    assert main(["describe", *common, "--kinds", "image"]) == 0
    assert main(["zeroshot", *common, "--output", str(tmp_path), "--name", "lmm"]) == 0

    local = TransformersDescriber(model, "cpu", batch_size=IMAGES)
    served_store = DescriptionStore(store)
    stop = threading.Event()
    try:
        for split, kind, prompt_of in (
            ("train", "image", lambda info: load_prompts(info.prompts).description("image", info.domain)),
            ("test", "zeroshot", lambda info: load_prompts(info.prompts).multiple_choice(info.classnames, info.domain)),
        ):
            data = build_dataset("eurosat", eurosat_folder, split, options=DatasetOptions(limit=IMAGES))
            hashes = image_hashes(data, progress=False)
            prompt = prompt_of(data.info)
            expected = local.describe(
                [job.build() for job in image_jobs(data, hashes, lambda i, prompt=prompt: prompt, kind=kind)], stop
            )
            got = served_store.get_texts(hashes, kind, model=model, prompt=prompt)
            assert got == expected and all(got), (split, got, expected)
    finally:
        served_store.close()
    answers = [json.loads(line)["answer"] for line in (tmp_path / "lmm" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == IMAGES and all(answers)


def test_class_descriptions_through_transformers_serve_equal_the_in_process_model(served, eurosat_folder, tmp_path):
    """The text-only kind: a chat message without a picture, for each class name and question."""
    url, model = served
    store = tmp_path / "classes.sqlite"
    questions = tmp_path / "prompts.json"
    questions.write_text(json.dumps({"classes": ["What does {label} look like?"]}))
    describe = ["describe", "--dataset", "eurosat", "--root", str(eurosat_folder), "--store", str(store)]
    describe += ["--kinds", "classes", "--lmm", "openai", "--lmm-url", url, "--prompts", str(questions)]
    assert main([*describe, "--lmm-timeout", "60"]) == 0
    with DescriptionStore(store) as served_store:
        texts = served_store.class_texts("eurosat")
    info = build_dataset("eurosat", eurosat_folder, "test").info
    local = TransformersDescriber(model, "cpu", batch_size=IMAGES)
    asked = [Request(None, f"What does {name} look like?") for name in info.classnames]
    assert [texts[name] for name in info.classnames] == [[a] for a in local.describe(asked, threading.Event())]
    assert main([*describe, "--lmm-timeout", "60"]) == 0  # resumed: nothing asked again
    with DescriptionStore(store) as again:
        assert again.class_texts("eurosat") == texts and sum(again.counts().values()) == 10
