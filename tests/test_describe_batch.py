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

from latteclip.cli import main
from latteclip.data import build_dataset
from latteclip.describe.batch import custom_id, shard_paths
from latteclip.describe.jobs import image_hashes, image_jobs
from latteclip.describe.openai_http import OpenAIDescriber
from latteclip.describe.prompts import load_prompts
from latteclip.describe.store import DescriptionStore
from tests.conftest import describe_argv
from tests.lmm_server import FakeLMMServer, expected_answer

MODEL = "fake-llava"


def answer_with(server: FakeLMMServer, requests: Path, results: Path, failing: set[str] = frozenset()) -> list[dict]:
    """Send every line to the test server and write its answers as a Batch results file: the OpenAI Batch API /
    vllm run-batch shape, and the older vLLM shape (response = the completion) on every third line."""
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    out = []
    for number, line in enumerate(lines):
        if line["custom_id"] in failing:
            out.append(
                {
                    "id": f"r{number}",
                    "custom_id": line["custom_id"],
                    "response": None,
                    "error": {"code": "server_error", "message": "scripted failure"},
                }
            )
            continue
        base = server.url[: -len("/v1")]
        post = urllib.request.Request(
            base + line["url"], json.dumps(line["body"]).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=10) as answer:
            completion = json.loads(answer.read())
        if number % 3 == 2:
            out.append({"id": f"r{number}", "custom_id": line["custom_id"], "response": completion})
        else:
            out.append(
                {
                    "id": f"r{number}",
                    "custom_id": line["custom_id"],
                    "error": None,
                    "response": {"status_code": 200, "request_id": f"q{number}", "body": completion},
                }
            )
    results.write_text("".join(json.dumps(o) + "\n" for o in out))
    return lines


def test_batch_requests_answers_and_reruns(eurosat_folder, tmp_path, capsys):
    store_path = tmp_path / "d.sqlite"
    common = describe_argv(eurosat_folder, kinds="image", store=store_path)
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


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lmm", "batch", "--lmm-model", MODEL], "needs one of --batch-out"),
        (["--lmm", "batch", "--batch-out", "x.jsonl"], "needs --lmm-model"),
        (["--lmm", "openai", "--lmm-url", "http://127.0.0.1:9/v1", "--batch-in", "x.jsonl"], "go with --lmm batch"),
        (
            ["--lmm", "batch", "--lmm-model", MODEL, "--batch-in", "x.jsonl", "--batch-shards", "2"],
            "splits the requests",
        ),
        (["--lmm", "batch", "--lmm-model", MODEL, "--batch-out", "x.jsonl", "--batch-shards", "0"], "must be positive"),
    ],
)
def test_batch_options_are_checked_first(eurosat_folder, tmp_path, capsys, flags, message):
    argv = describe_argv(eurosat_folder, *flags, store=tmp_path / "d.sqlite")
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_shards_for_a_cluster_and_several_results_files(eurosat_folder, tmp_path, capsys):
    store_path = tmp_path / "d.sqlite"
    batch = describe_argv(eurosat_folder, kinds="image", store=store_path, lmm="batch", lmm_model=MODEL)
    train = build_dataset("eurosat", eurosat_folder, "train")
    hashes = image_hashes(train, progress=False)
    prompt = load_prompts(train.info.prompts).description("image", train.info.domain)
    every_id = {custom_id(job) for job in image_jobs(train, hashes, lambda i: prompt)}

    assert main([*batch, "--batch-out", str(tmp_path / "requests.jsonl"), "--batch-shards", "4"]) == 0
    shards = [tmp_path / f"requests-{k}-of-4.jsonl" for k in range(1, 5)]
    assert sorted(tmp_path.glob("requests*")) == shards  # no unsplit file, no partial file left
    ids = [[json.loads(line)["custom_id"] for line in shard.read_text().splitlines()] for shard in shards]
    assert sum(map(len, ids)) == len(every_id) == len(set().union(*ids)) and set().union(*ids) == every_id
    assert {len(lines) for lines in ids} <= {len(every_id) // 4, -(-len(every_id) // 4)}  # near-equal: one line apart
    # the shards are not overwritten
    assert main([*batch, "--batch-out", str(tmp_path / "requests.jsonl"), "--batch-shards", "4"]) == 2

    with FakeLMMServer(model=MODEL) as server:
        failing = ids[0][0]
        for k in (1, 2, 3):  # three nodes finished; the fourth has not
            answer_with(server, shards[k - 1], tmp_path / f"results-{k}.jsonl", {failing} if k == 1 else set())
        # a missing file among several is named before anything is read
        assert main([*batch, "--batch-in", str(tmp_path / "results-1.jsonl"), str(tmp_path / "results-9.jsonl")]) == 2
        assert "results-9.jsonl does not exist" in capsys.readouterr().err
        assert main([*batch, "--batch-in", str(tmp_path / "nothing-*.jsonl")]) == 2
        assert "matches no file" in capsys.readouterr().err
        with DescriptionStore(store_path) as store:
            assert list(store.rows()) == []
        # a path and a glob pattern (as the shell passes a quoted one)
        assert (
            main([*batch, "--batch-in", str(tmp_path / "results-1.jsonl"), str(tmp_path / "results-[23].jsonl")]) == 1
        )
        with DescriptionStore(store_path) as store:
            texts = dict(zip(hashes, store.get_texts(hashes, "image", model=MODEL, prompt=prompt)))
        stored = {h for h, text in texts.items() if text is not None}
        by_id = {custom_id(job): job.image_hash for job in image_jobs(train, hashes, lambda i: prompt)}
        assert stored == {by_id[i] for i in ids[0] + ids[1] + ids[2] if i != failing}
        assert all(texts[h] == expected_answer(h, prompt) for h in stored)

        # only what is missing is written again, the fourth shard and the failed line: 40 files asked, one per request
        assert main([*batch, "--batch-out", str(tmp_path / "again.jsonl"), "--batch-shards", "40"]) == 0
        missing = len(ids[3]) + 1
        again = [tmp_path / f"again-{k:02d}-of-{missing}.jsonl" for k in range(1, missing + 1)]
        assert 10 <= missing < 40 and sorted(tmp_path.glob("again*")) == again
        assert {json.loads(shard.read_text())["custom_id"] for shard in again} == {*ids[3], failing}
        for k, shard in enumerate(again, start=1):
            answer_with(server, shard, tmp_path / f"again-results-{k:02d}.jsonl")
        capsys.readouterr()
        patterns = [str(tmp_path / "again-results-*.jsonl"), str(tmp_path / "results-*.jsonl")]
        assert main([*batch, "--batch-in", *patterns]) == 0
        # every line of the first results files is stored already, but the failed one (answered by the again files, the
        # answer wins over the error in any order): matched by nothing, nothing overwritten
        assert f"{sum(map(len, ids[:3])) - 1} lines of" in capsys.readouterr().out
        with DescriptionStore(store_path) as store:
            texts = store.get_texts(hashes, "image", model=MODEL, prompt=prompt)
        assert texts == [expected_answer(h, prompt) for h in hashes]
        assert main([*batch, "--batch-out", str(tmp_path / "none.jsonl"), "--batch-shards", "4"]) == 0
        assert not list(tmp_path.glob("none*"))


def test_shard_names_sort_in_order():
    names = [p.name for p in shard_paths("out/requests.jsonl", 12)]
    assert names[:2] == ["requests-01-of-12.jsonl", "requests-02-of-12.jsonl"]
    assert names[-1] == "requests-12-of-12.jsonl"
    assert str(shard_paths("out/requests.jsonl", 3)[2]) == "out/requests-3-of-3.jsonl"
