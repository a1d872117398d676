"""A local OpenAI-compatible chat-completions server for tests and the throughput benchmark.

It answers `POST /v1/chat/completions` with a text that names the image's content hash and the
prompt, so a test can tell whether every stored answer belongs to its own image, and it records
every request. A `faults` function, given (image hash, attempt number), can make a request fail:
"500", "429", "400", "404", "401", "timeout" (answers too late), "malformed" (broken JSON), "empty"
(an empty answer), "drop" (closes the connection without answering). Like real servers it can
require an API key (`api_key`: 401 otherwise), list other models than it runs (`listed`), lack the
`/models` route (`models_route=False`), refuse requests for another model with HTTP 400
(`pinned`), and say why an answer ended (`finish_reason`).

With `certificate` (a PEM file of its key and certificate chain) it serves HTTPS. `arrivals` keeps every
request's peer address (one per connection) and headers in the order they came, GET /models included.

`one_at_a_time` makes it answer like `transformers serve`: requests wait in a queue and are answered in turn.
A request with a `response_format` must carry a JSON schema that is an enum of strings (else HTTP 400);
its answer is then one of those strings as JSON, picked by the image hash (`constrained_answer`).

Run as a script (`python tests/lmm_server.py --delay 0.1`) it serves in its own process and
prints its base URL, which is how the benchmark keeps server and client CPU apart.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def expected_answer(image_hash: str, prompt: str) -> str:
    return f"image {image_hash[:12]} asked {hashlib.sha1(prompt.encode()).hexdigest()[:8]}"


def constrained_answer(image_hash: str, choices: list[str]) -> str:
    """The choice a constrained request gets: fixed by the image, so a test knows every answer."""
    return choices[int(image_hash, 16) % len(choices)]


def schema_choices(response_format: object) -> list[str] | None:
    """The enum of a `json_schema` response_format as OpenAI specifies it, or None when it is malformed."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
        return None
    schema = spec["schema"]
    choices = schema.get("enum")
    if (
        schema.get("type") != "string"
        or not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, str) for c in choices)
    ):
        return None
    return choices


@dataclass
class Seen:
    """One request as the server saw it."""

    image_hash: str
    prompt: str
    outcome: str
    body: dict
    headers: dict
    image_size: tuple[int, int]


class _Listener(ThreadingHTTPServer):
    request_queue_size = 128  # many connections at once, like real servers (the default 5 drops SYNs: 1 s stalls)
    daemon_threads = True


@dataclass
class FakeLMMServer:
    delay: float = 0.0
    model: str = "fake-llava"
    faults: Callable[[str, int], str] | None = None
    hang_seconds: float = 2.0
    one_at_a_time: bool = False
    answer: Callable[[str, str], str] = expected_answer
    api_key: str | None = None
    listed: list[str] | None = None  # what GET /models lists (default: the model it runs)
    models_route: bool = True
    pinned: bool = False
    finish_reason: str = "stop"
    certificate: str | None = None  # PEM file of the server's key and certificate chain: HTTPS
    seen: list[Seen] = field(default_factory=list)
    arrivals: list[tuple[tuple[str, int], dict]] = field(default_factory=list)  # (peer, headers) of every request
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _attempts: Counter = field(default_factory=Counter)
    _turn: threading.Lock = field(default_factory=threading.Lock)  # held while answering, when one_at_a_time

    def start(self) -> str:
        self.httpd = _Listener(("127.0.0.1", 0), _handler_for(self))
        if self.certificate:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.certificate)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self.url

    @property
    def url(self) -> str:
        return f"{'https' if self.certificate else 'http'}://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeLMMServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what the tests read ---------------------------------------------------------------------
    def requests_per_key(self) -> Counter:
        with self._lock:
            return Counter((s.image_hash, s.prompt) for s in self.seen)

    def answered_per_key(self) -> Counter:
        with self._lock:
            return Counter((s.image_hash, s.prompt) for s in self.seen if s.outcome == "ok")

    def next_attempt(self, image_hash: str, prompt: str) -> int:
        with self._lock:
            self._attempts[(image_hash, prompt)] += 1
            return self._attempts[(image_hash, prompt)]

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


def _handler_for(server: FakeLMMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real servers
        disable_nagle_algorithm = (
            True  # headers and body leave at once, as from real servers (no 40 ms delayed-ACK stall)
        )

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def _key_rejected(self) -> bool:
            if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                return False
            self._send(401, b'{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}')
            return True

        def _arrived(self) -> None:
            with server._lock:
                server.arrivals.append((self.client_address[:2], dict(self.headers)))

        def do_GET(self) -> None:
            self._arrived()
            if self._key_rejected():
                return
            if self.path.rstrip("/").endswith("/stats"):  # for the benchmark, whose server is another process
                counts = server.requests_per_key()
                stats = {
                    "requests": sum(counts.values()),
                    "keys": len(counts),
                    "most_per_key": max(counts.values(), default=0),
                }
                self._send(200, json.dumps(stats).encode())
            elif server.models_route and self.path.rstrip("/").endswith("/v1/models"):
                ids = [server.model] if server.listed is None else server.listed
                self._send(
                    200, json.dumps({"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}).encode()
                )
            else:
                self._send(404, b'{"error": "no such route"}')

        def do_POST(self) -> None:
            self._arrived()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self._key_rejected():
                return
            if not self.path.endswith("/v1/chat/completions"):
                self._send(404, b'{"error": "no such route"}')
                return
            if server.pinned and body.get("model") != server.model:
                server.record(Seen("", "", "wrong model", body, dict(self.headers), (0, 0)))
                message = f"The model `{body.get('model')}` does not exist."
                self._send(400, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())
                return
            content = body["messages"][0]["content"]
            url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
            prompt = next(c["text"] for c in content if c["type"] == "text")
            data = base64.b64decode(url.split(",", 1)[1])
            image_hash = hashlib.sha1(data).hexdigest()
            size = Image.open(io.BytesIO(data)).size
            attempt = server.next_attempt(image_hash, prompt)
            outcome = server.faults(image_hash, attempt) if server.faults else "ok"
            if "response_format" in body and outcome == "ok":
                choices = schema_choices(body["response_format"])
                outcome = "400" if choices is None else "choice"
            server.record(Seen(image_hash, prompt, outcome, body, dict(self.headers), size))
            with server._turn if server.one_at_a_time else contextlib.nullcontext():
                if server.delay:
                    time.sleep(server.delay)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    self._reply(outcome, body, image_hash, prompt)

        def _reply(self, outcome: str, body: dict, image_hash: str, prompt: str) -> None:
            if outcome in ("500", "400", "404", "401"):
                self._send(int(outcome), json.dumps({"error": {"message": f"scripted {outcome}"}}).encode())
            elif outcome == "429":
                self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
            elif outcome == "timeout":
                time.sleep(server.hang_seconds)
                self._send(200, _completion(body["model"], server.answer(image_hash, prompt)))
            elif outcome == "malformed":
                self._send(200, b'{"choices": [{"message": ')
            elif outcome == "empty":
                self._send(200, _completion(body["model"], "", server.finish_reason))
            elif outcome == "choice":
                choices = schema_choices(body["response_format"]) or []
                self._send(
                    200,
                    _completion(
                        body["model"], json.dumps(constrained_answer(image_hash, choices)), server.finish_reason
                    ),
                )
            elif outcome == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
            else:
                self._send(200, _completion(body["model"], server.answer(image_hash, prompt), server.finish_reason))

    return Handler


def _completion(model: str, text: str, finish_reason: str = "stop") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            ],
        }
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.1, help="seconds before each answer")
    parser.add_argument("--one-at-a-time", action="store_true", help="answer requests in turn, like transformers serve")
    args = parser.parse_args()
    server = FakeLMMServer(delay=args.delay, one_at_a_time=args.one_at_a_time)
    print(server.start(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
