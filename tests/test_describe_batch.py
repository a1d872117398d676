"""Batch files (`describe --lmm batch`): requests -> a results file answered by the local test server -> stored.

The requests must be the bodies the live client sends, the store must end as a live run leaves it (a
live run afterwards asks nothing), and reruns follow the live client's rules: only what is missing is
written again, and an answer already stored is not overwritten by a later results file.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from tests.lmm_server import FakeLMMServer, expected_answer

from latteclip.cli import main
from latteclip.data import build_dataset
from latteclip.describe.batch import custom_id
from latteclip.describe.jobs import image_hashes, image_jobs
from latteclip.describe.openai_http import OpenAIDescriber
from latteclip.describe.prompts import load_prompts
from latteclip.describe.store import DescriptionStore

MODEL = "fake-llava"


def answer_with(server: FakeLMMServer, requests: Path, results: Path, failing: set[str] = frozenset()) -> list[dict]:
    """Send every line to the test server and write its answers as a Batch results file: the OpenAI Batch API /
    vllm run-batch shape, and the older vLLM shape (response = the completion) on every third line."""
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    out = []
    for number, line in enumerate(lines):
        if line["custom_id"] in failing:
            out.append({"id": f"r{number}", "custom_id": line["custom_id"], "response": None,
                        "error": {"code": "server_error", "message": "scripted failure"}})
            continue
        base = server.url[: -len("/v1")]
        post = urllib.request.Request(base + line["url"], json.dumps(line["body"]).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(post, timeout=10) as answer:
            completion = json.loads(answer.read())
        if number % 3 == 2:
            out.append({"id": f"r{number}", "custom_id": line["custom_id"], "response": completion})
        else:
            out.append({"id": f"r{number}", "custom_id": line["custom_id"], "error": None,
                        "response": {"status_code": 200, "request_id": f"q{number}", "body": completion}})
    results.write_text("".join(json.dumps(o) + "\n" for o in out))
    return lines


def test_batch_requests_answers_and_reruns(eurosat_folder, tmp_path, capsys):
    store_path = tmp_path / "d.sqlite"
    common = ["describe", "--dataset", "eurosat", "--root", str(eurosat_folder), "--kinds", "image", "--store", str(store_path)]
    batch = [*common, "--lmm", "batch", "--lmm-model", MODEL]
    train = build_dataset("eurosat", eurosat_folder, "train")
    hashes = image_hashes(train, progress=False)
    prompt = load_prompts(train.info.prompts).description("image", train.info.domain)
    jobs = {custom_id(job): job for job in image_jobs(train, hashes, lambda i: prompt)}

    assert main([*batch, "--batch-out", str(tmp_path / "requests.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == len(set(hashes)) == len({line["custom_id"] for line in lines})
    assert main([*batch, "--batch-out", str(tmp_path / "requests.jsonl")]) == 2  # an existing file is not overwritten

    failing = {lines[4]["custom_id"]}
    with FakeLMMServer(model=MODEL) as server:
        live = OpenAIDescriber([server.url], model=MODEL)  # only its request bodies: what the live client would send
        for line in lines[:10]:
            assert (line["method"], line["url"]) == ("POST", "/v1/chat/completions")
            assert line["body"] == json.loads(live.payload(jobs[line["custom_id"]].build()))
        answer_with(server, tmp_path / "requests.jsonl", tmp_path / "results.jsonl", failing)
        assert main([*batch, "--batch-in", str(tmp_path / "results.jsonl")]) == 1  # one request has no answer yet
        store = DescriptionStore(store_path)
        texts = dict(zip(hashes, store.get_texts(hashes, "image", model=MODEL, prompt=prompt)))
        store.close()
        missing = jobs[lines[4]["custom_id"]].image_hash
        assert texts[missing] is None
        assert all(texts[h] == expected_answer(h, prompt) for h in hashes if h != missing)

        assert main([*batch, "--batch-out", str(tmp_path / "again.jsonl")]) == 0
        again = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
        assert [line["custom_id"] for line in again] == list(failing)
        answer_with(server, tmp_path / "again.jsonl", tmp_path / "again-results.jsonl")
        assert main([*batch, "--batch-in", str(tmp_path / "again-results.jsonl")]) == 0
        # the first results file again: every line is stored already, nothing changes
        capsys.readouterr()
        assert main([*batch, "--batch-in", str(tmp_path / "results.jsonl")]) == 0
        assert f"{len(lines)} lines of" in capsys.readouterr().out

        assert main([*batch, "--batch-out", str(tmp_path / "nothing.jsonl")]) == 0
        assert not (tmp_path / "nothing.jsonl").exists()
        sent = len(server.seen)
        assert main([*common, "--lmm", "openai", "--lmm-url", server.url, "--lmm-model", MODEL]) == 0
        assert len(server.seen) == sent  # batch answers are the live client's: a live run asks nothing


@pytest.mark.parametrize("flags, message", [
    (["--lmm", "batch", "--lmm-model", MODEL], "needs one of --batch-out"),
    (["--lmm", "batch", "--batch-out", "x.jsonl"], "needs --lmm-model"),
    (["--lmm", "openai", "--lmm-url", "http://127.0.0.1:9/v1", "--batch-in", "x.jsonl"], "go with --lmm batch"),
])
def test_batch_options_are_checked_first(eurosat_folder, tmp_path, capsys, flags, message):
    argv = ["describe", "--dataset", "eurosat", "--root", str(eurosat_folder), "--store", str(tmp_path / "d.sqlite"), *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
