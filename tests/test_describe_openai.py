"""The `openai` describer and the runner against a local chat-completions server that can be told to fail.

The server counts every request by (image content hash, prompt), so the tests can check that
every image ends described or reported failed, that nothing answered is asked again, and that a
run killed half-way and rerun asks exactly for what was not stored.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from latteclip.cli import main
from latteclip.data import DatasetOptions, build_dataset
from latteclip.describe.jobs import image_hashes, image_jobs
from latteclip.describe.openai_http import OpenAIDescriber
from latteclip.describe.runner import Runner
from latteclip.describe.store import DescriptionStore
from latteclip.describe.transport import OneWriteBackend
from tests.conftest import describe_argv
from tests.lmm_server import FakeLMMServer, expected_answer

PROMPT = "Describe the land use in the photo concisely, using less than 20 words."
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train(eurosat_folder):
    return build_dataset("eurosat", eurosat_folder, "train")


@pytest.fixture(scope="module")
def hashes(train):
    return image_hashes(train, progress=False)


def describer(url: str | list[str], **kwargs) -> OpenAIDescriber:
    options = {"timeout": 5.0, "retries": 3, "backoff": 0.01, **kwargs}
    return OpenAIDescriber([url] if isinstance(url, str) else url, **options)


def run(train, hashes, store, desc, concurrency=8, **kwargs):
    runner = Runner(desc, store, "eurosat", concurrency, progress=False, **kwargs)
    return runner.run(image_jobs(train, hashes, lambda i: PROMPT))


@pytest.fixture(scope="module")
def zipped(eurosat_zip):
    """120 images read in place from the real archive, which worker threads share."""
    return build_dataset("eurosat", eurosat_zip, "train", options=DatasetOptions(limit=120, seed=1))


@pytest.mark.parametrize("source", ["folder", "zip"])
def test_every_image_described_once_with_its_own_answer(source, train, hashes, zipped, tmp_path):
    if source == "zip":
        train, hashes = zipped, image_hashes(zipped, progress=False)
    store = DescriptionStore(tmp_path / "d.sqlite")
    unique = set(hashes)
    with FakeLMMServer(delay=0.02) as server:
        summary = run(train, hashes, store, describer(server.url), concurrency=16)
        assert summary.complete
        counts = summary.counts["image"]
        assert (counts.total, counts.done, counts.cached, counts.failed) == (
            len(train),
            len(unique),
            len(train) - len(unique),
            0,
        )
        assert set(server.requests_per_key().values()) == {1} and len(server.requests_per_key()) == len(unique)
        # no answer landed on another image: the server's answer names the image it was sent
        assert store.get_texts(hashes, "image", model="fake-llava") == [expected_answer(h, PROMPT) for h in hashes]
        body = server.seen[0].body
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("fake-llava", 0, 77)
        assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        assert {s.image_size for s in server.seen} == {(64, 64)}  # EuroSAT files are sent as they are

        again = run(train, hashes, store, describer(server.url))
        assert len(server.seen) == len(unique)  # the rerun sent nothing
        assert again.complete and again.counts["image"].cached == len(train)


def test_faults_end_described_or_reported_and_nothing_is_asked_twice(train, hashes, tmp_path):
    ordered = sorted(set(hashes))
    transient = {
        "500": ordered[0:5],
        "429": ordered[5:10],
        "timeout": ordered[10:13],
        "malformed": ordered[13:18],
        "empty": ordered[18:23],
        "drop": ordered[23:28],
    }
    first_try = {h: fault for fault, group in transient.items() for h in group}
    always_500, refused = set(ordered[30:32]), ordered[32]

    def faults(image_hash: str, attempt: int) -> str:
        if image_hash in always_500:
            return "500"
        if image_hash == refused:
            return "400"
        return first_try.get(image_hash, "ok") if attempt == 1 else "ok"

    store = DescriptionStore(tmp_path / "d.sqlite")
    with FakeLMMServer(faults=faults, hang_seconds=1.5) as server:
        summary = run(train, hashes, store, describer(server.url, timeout=0.5, retries=2), concurrency=8)
        requests = server.requests_per_key()
        answered = server.answered_per_key()
    counts = summary.counts["image"]
    assert counts.failed == 3 and counts.done == len(ordered) - 3 and not summary.complete
    failed = {image: reason for _, image, reason in summary.failures}
    by_hash = {h: s.path for s, h in zip(train.samples, hashes)}
    assert set(failed) == {by_hash[h] for h in [*always_500, refused]}
    assert (
        "HTTP 500" in failed[by_hash[min(always_500)]] and "gave up after 3 tries" in failed[by_hash[min(always_500)]]
    )
    assert "HTTP 400" in failed[by_hash[refused]]
    for h in ordered:
        expected_requests = 3 if h in always_500 else 2 if h in first_try else 1
        assert requests[(h, PROMPT)] == expected_requests, (h, first_try.get(h))
        assert answered[(h, PROMPT)] == (0 if h in always_500 or h == refused else 1)
    texts = dict(zip(hashes, store.get_texts(hashes, "image")))
    assert all(texts[h] == expected_answer(h, PROMPT) for h in ordered if h not in always_500 and h != refused)
    assert texts[refused] is None and all(texts[h] is None for h in always_500)


def test_repeated_failures_stop_the_run(train, hashes, tmp_path):
    store = DescriptionStore(tmp_path / "d.sqlite")
    with FakeLMMServer(faults=lambda h, a: "500") as server:
        summary = run(train, hashes, store, describer(server.url, retries=1), concurrency=2, stop_after_failures=5)
        sent = len(server.seen)
    assert summary.stopped.startswith("5 failures in a row (last:") and "HTTP 500" in summary.stopped
    assert summary.counts["image"].not_asked > 0 and sent < 20
    assert list(store.rows()) == []


def test_a_wrong_route_stops_at_once_with_a_hint(train, hashes, tmp_path):
    store = DescriptionStore(tmp_path / "d.sqlite")
    with FakeLMMServer() as server:
        wrong = server.url.replace("/v1", "/v2")
        summary = run(train, hashes, store, describer(wrong, model="fake-llava"), concurrency=4)
    assert "HTTP 404" in summary.stopped and "check --lmm-url" in summary.stopped
    assert summary.counts["image"].not_asked >= len(train) - 4


def test_a_one_at_a_time_server_gets_fewer_requests_in_flight_and_none_twice(train, hashes, tmp_path):
    # 32 in flight x 60 ms = 1.92 s of queue against a 0.8 s timeout: without waiting on a server that keeps
    # answering, and without fewer requests in flight, the queue's tail would time out and be sent again
    # (timeouts well above a loaded machine's scheduling delays: at 30 ms / 0.4 s it failed beside two benchmarks)
    store = DescriptionStore(tmp_path / "d.sqlite")
    with FakeLMMServer(delay=0.06, one_at_a_time=True) as server:
        desc = describer(server.url, timeout=0.8, retries=0)
        summary = run(train, hashes, store, desc, concurrency=32)
        requests = server.requests_per_key()
    assert summary.complete, summary.lines()
    assert len(requests) == len(set(hashes)) and set(requests.values()) == {1}
    assert desc.limit.peak == 32 and desc.limit.lowest is not None and desc.limit.lowest <= 16


def test_429s_lower_the_requests_in_flight_and_answers_raise_them_again(train, hashes, tmp_path):
    store = DescriptionStore(tmp_path / "d.sqlite")
    with FakeLMMServer(delay=0.01, faults=lambda h, attempt: "429" if attempt == 1 and h < "8" else "ok") as server:
        desc = describer(server.url)
        summary = run(train, hashes, store, desc, concurrency=16)
        requests = server.requests_per_key()
    assert summary.complete
    assert {n for (h, _), n in requests.items() if h < "8"} == {2} and {
        n for (h, _), n in requests.items() if h >= "8"
    } == {1}
    assert desc.limit.lowest is not None and desc.limit.lowest < 16
    assert desc.limit.limit is None or desc.limit.limit > desc.limit.lowest  # grew back on the answers after the 429s


def test_work_is_shared_over_endpoints_and_a_dead_one_is_avoided(train, hashes, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"  # nothing listens once the socket closes
    with FakeLMMServer(delay=0.01) as one, FakeLMMServer(delay=0.01) as two:
        store = DescriptionStore(tmp_path / "two.sqlite")
        assert run(train, hashes, store, describer([one.url, two.url]), concurrency=8).complete
        share = len(one.seen) / (len(one.seen) + len(two.seen))
        assert 0.3 < share < 0.7
        store = DescriptionStore(tmp_path / "dead.sqlite")
        summary = run(train, hashes, store, describer([dead, one.url], model="fake-llava"), concurrency=8)
        assert summary.complete


def test_api_key_comes_from_the_environment(train, hashes, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("LATTECLIP_LMM_API_KEY", "sk-test")
    with FakeLMMServer() as server:
        runner = Runner(describer(server.url), DescriptionStore(tmp_path / "d.sqlite"), "eurosat", 2, progress=False)
        assert runner.run(image_jobs(train, hashes, lambda i: PROMPT)[:3]).complete
        assert [s.headers.get("Authorization") for s in server.seen] == ["Bearer sk-test"] * 3


def test_a_store_that_refuses_writes_stops_the_run_and_counts_no_answer_as_described(train, hashes, tmp_path):
    store = DescriptionStore(tmp_path / "refusing.sqlite")
    store._db.execute("PRAGMA query_only = 1")  # SQLite itself refuses every write from now on
    with FakeLMMServer() as server:
        summary = run(train, hashes, store, describer(server.url), concurrency=4)
        asked = len(server.seen)
    counts = summary.counts["image"]
    assert summary.stopped.startswith(f"cannot write the store {store.path}: attempt to write a readonly database")
    assert counts.done == counts.cached == 0  # an answer that was not stored is not described
    assert all("the run stopped" in reason for _, _, reason in summary.failures)  # jobs taken as the run stopped
    assert counts.not_asked + counts.failed == counts.total == len(train) and 1 <= asked < len(train)
    store.close()


class InterruptedOnce(DescriptionStore):
    """A store whose first write is cut by Ctrl-C, as if it arrived while the main thread held answers unwritten."""

    interrupted = False

    def put_many(self, rows):
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        super().put_many(rows)


def test_an_interrupt_while_answers_are_being_stored_keeps_every_answer_received(train, hashes, tmp_path):
    store = InterruptedOnce(tmp_path / "d.sqlite")
    with FakeLMMServer(delay=0.02) as server:
        with pytest.raises(KeyboardInterrupt):
            run(train, hashes, store, describer(server.url), concurrency=4)
        answered = {s.image_hash for s in server.seen}
    assert store.interrupted and answered
    assert {r["image_hash"] for r in store.rows()} == answered  # the answers the cut write held are stored too
    store.close()


def test_cancelled_runner_then_rerun_asks_only_for_the_rest(train, hashes, tmp_path):
    store = DescriptionStore(tmp_path / "d.sqlite")
    with FakeLMMServer(delay=0.03) as server:
        runner = Runner(describer(server.url), store, "eurosat", 4, progress=False)

        def cancel_after_some_answers():
            while len(list(store.rows())) < 30:
                time.sleep(0.01)
            runner.cancel()

        threading.Thread(target=cancel_after_some_answers, daemon=True).start()
        first = runner.run(image_jobs(train, hashes, lambda i: PROMPT))
        assert first.stopped == "cancelled" and not first.complete
        stored_first = {r["image_hash"] for r in store.rows()}
        assert 30 <= len(stored_first) < len(set(hashes))
        seen_first = len(server.seen)
        second = run(train, hashes, store, describer(server.url))
        asked_again = Counter(s.image_hash for s in server.seen[seen_first:])
    assert second.complete
    assert not set(asked_again) & stored_first
    assert set(asked_again) == set(hashes) - stored_first and set(asked_again.values()) == {1}


@pytest.mark.slow
def test_killed_describe_process_resumes_without_repeating_stored_requests(eurosat_folder, tmp_path):
    store_path = tmp_path / "killed.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    with FakeLMMServer(delay=0.1) as server:
        openai = {"lmm": "openai", "lmm_url": server.url, "kinds": "image", "concurrency": 4}
        args = describe_argv(eurosat_folder, **openai, store=store_path)
        process = subprocess.Popen(
            [sys.executable, "-m", "latteclip", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while len(server.answered_per_key()) < 40 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        store = DescriptionStore(store_path)
        stored_first = {r["image_hash"] for r in store.rows()}
        store.close()
        seen_first = len(server.seen)
        assert 30 <= len(stored_first) < 110

        assert main(args) == 0
        asked_again = Counter(s.image_hash for s in server.seen[seen_first:])
    train = build_dataset("eurosat", eurosat_folder, "train")
    every = set(image_hashes(train, progress=False))
    store = DescriptionStore(store_path)
    assert {r["image_hash"] for r in store.rows()} == every
    assert not set(asked_again) & stored_first  # nothing stored before the kill was asked again
    assert set(asked_again) == every - stored_first and set(asked_again.values()) == {1}


def _answer_once_per_connection(listener: socket.socket, connections: list[bytes]) -> None:
    """A server that answers one request on each connection as if keeping it alive (HTTP/1.1, no `Connection:
    close`), then closes it while the client holds it idle, as servers do when their keep-alive time runs out."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:  # the listener was closed: the test is over
            return
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += connection.recv(65536)
            connections.append(head.split(b" ")[1])
            if head.startswith(b"GET"):
                answer = b'{"data": [{"id": "m"}]}'
            else:
                answer = b'{"choices": [{"message": {"content": "fields"}, "finish_reason": "stop"}]}'
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                % (len(answer), answer)
            )


def test_a_kept_alive_connection_the_server_closed_is_replaced_before_a_request_is_lost(train):
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[bytes] = []
    threading.Thread(target=_answer_once_per_connection, args=(listener, connections), daemon=True).start()
    desc = describer(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", retries=0)  # a lost request fails at once
    try:
        request = image_jobs(train, image_hashes(train, progress=False)[:1], lambda i: PROMPT)[0].build()
        answers = []
        for _ in range(3):
            time.sleep(0.05)  # the server has closed the last connection by now
            answers.append(desc.ask(request, threading.Event()))
    finally:
        desc.close()
        listener.close()
    assert answers == ["fields"] * 3
    assert connections == [b"/v1/models"] + [b"/v1/chat/completions"] * 3  # a new connection for each request


def test_a_request_leaves_in_one_send_and_its_answer_is_awaited_once_it_has_left():
    """httpcore writes headers and body apart; the stream holds them until the answer is read, sends both, then waits
    for the answer (the describer's rule) before the first read, and only then."""
    listener = socket.create_server(("127.0.0.1", 0))
    backend = OneWriteBackend()
    stream = backend.connect_tcp("127.0.0.1", listener.getsockname()[1])
    theirs, _ = listener.accept()
    theirs.setblocking(False)
    awaited = []
    backend.await_answer = lambda ready: awaited.append((ready.getpeername(), theirs.recv(1024)))
    stream.write(b"POST /v1/chat/completions HTTP/1.1\r\n\r\n")
    stream.write(b'{"model": "m"}')
    with pytest.raises(BlockingIOError):  # nothing has left yet
        theirs.recv(1024)
    theirs.sendall(b"HTTP/1.1 200 OK\r\n")
    assert stream.read(1024) == b"HTTP/1.1 200 OK\r\n"
    assert awaited == [(theirs.getsockname(), b'POST /v1/chat/completions HTTP/1.1\r\n\r\n{"model": "m"}')]
    theirs.sendall(b"Content-Length: 0\r\n\r\n")
    assert stream.read(1024) == b"Content-Length: 0\r\n\r\n"
    assert len(awaited) == 1  # the rest of an answer is read without waiting again
    stream.close()
    theirs.close()
    listener.close()
