"""The `openai` describer: the chat-completions protocol over HTTP (vLLM, SGLang, llama.cpp, Ollama, ...).

The stage is I/O-bound, so the runner keeps many requests in flight (one thread each) and spreads them over every
`--lmm-url`. The transport (`transport.py`: httpcore, the HTTP engine of httpx) keeps connections alive (one per
thread and endpoint: as many as requests in flight), takes proxies from the environment (HTTPS_PROXY, HTTP_PROXY,
ALL_PROXY, NO_PROXY), and checks the servers' certificates against the system's trust store, a `--lmm-ca-bundle` file,
or not at all (`--lmm-insecure`). A request that meets a 429, a 5xx, a timeout, a dropped connection, malformed JSON
or an empty answer is retried with exponential back-off, on the next healthy endpoint; an endpoint that fails is
rested for a while so a dead server does not slow the others. An empty answer is asked once more only: at temperature
0 the model gives the same answer again. Answers that show the configuration itself is wrong (401, 403, 404, a model
the server does not serve, an untrusted certificate) stop the run at once, and before any image is sent the servers
are asked (GET /models) whether they answer, accept the key and serve the model.

A request times out only when its server has answered nothing for `--lmm-timeout` seconds: a server
that keeps answering others holds it in a queue, and sending it again would only make the queue longer.
Such late answers and 429s lower the number of requests in flight (`AdaptiveLimit`); answers in time
raise it again, so one `--concurrency` suits vLLM and a server that answers one request at a time.
The wait for an answer to begin is ours (httpcore's read timeout is fixed): the transport's stream, once the
request has left and before it reads the answer, waits on the connection's socket by that rule.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore

from latteclip.describe.adaptive import AdaptiveLimit
from latteclip.describe.backend import Answer, BackendStopped, Describer, ItemFailed, Request
from latteclip.describe.transport import TRANSPORT_ERRORS, ThreadConnections, certificate_check, untrusted_certificate
from latteclip.errors import LatteclipError

API_KEY_VARIABLES = ("LATTECLIP_LMM_API_KEY", "OPENAI_API_KEY")
DEFAULT_CONCURRENCY = 64
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
STOPPING_STATUS = {401: "rejected the API key", 403: "refused access", 404: "has no such route or model"}
MAX_TOKENS = 77
MAX_REST_SECONDS = 30.0
CHAT_ROUTE = "/chat/completions"


def chat_body(model: str, request: Request, max_tokens: int = MAX_TOKENS) -> dict:
    """The chat-completions request for one picture and prompt (or a prompt alone): what the live client sends and
    batch files hold.

    Only OpenAI fields, since some servers (`transformers serve`) refuse any other with HTTP 422; `response_format`
    only when the request asks for constrained answers.
    """
    picture = [{"type": "image_url", "image_url": {"url": request.data_url()}}] if request.image is not None else []
    message = {"role": "user", "content": [*picture, {"type": "text", "text": request.prompt}]}
    body = {"model": model, "messages": [message], "temperature": 0, "max_tokens": max_tokens}
    if request.response_format is not None:
        body["response_format"] = request.response_format
    return body


def answer_text(completion: dict) -> str:
    """The answer of a chat completion, whitespace collapsed ("" when empty); KeyError/IndexError/TypeError when
    malformed."""
    content = completion["choices"][0]["message"]["content"]
    if isinstance(content, list):  # some servers return content parts
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return " ".join(str(content or "").split())


def api_key_from_environment() -> str | None:
    for name in API_KEY_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


@dataclass
class Endpoint:
    """One server: its base URL, and how long to rest it after failures."""

    url: str
    failures_in_row: int = 0
    rest_until: float = 0.0
    last_answer: float = float("-inf")  # when it last answered anything (time.monotonic)

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        base = url.strip().rstrip("/")
        if base.endswith("/chat/completions"):
            base = base[: -len("/chat/completions")]
        parts = urlsplit(base)
        try:
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError as err:  # urlsplit reads the port only when asked
            raise LatteclipError(f"--lmm-url {url} has a bad port: {err}") from err
        if not valid:
            raise LatteclipError(
                f"--lmm-url {url} is not an http(s) URL; give the server's base, e.g. http://host:8000/v1"
            )
        return cls(base)


@dataclass
class EndpointPool:
    """Round-robin over the endpoints that are not resting; the soonest rested one when all are."""

    endpoints: list[Endpoint]
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def pick(self) -> Endpoint:
        with self._lock:
            now = time.monotonic()
            count = len(self.endpoints)
            for offset in range(count):
                candidate = self.endpoints[(self._next + offset) % count]
                if candidate.rest_until <= now:
                    self._next = (self._next + offset + 1) % count
                    return candidate
            return min(self.endpoints, key=lambda e: e.rest_until)

    def failed(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.failures_in_row += 1
            endpoint.rest_until = time.monotonic() + min(MAX_REST_SECONDS, 0.5 * 2 ** (endpoint.failures_in_row - 1))

    def succeeded(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.failures_in_row = 0
            endpoint.rest_until = 0.0


class RetryableError(Exception):
    """A failure another try may not meet; `wait` is the server's Retry-After, when it sent one."""

    def __init__(self, reason: str, wait: float | None = None, overload: bool = False):
        super().__init__(reason)
        self.wait = wait
        self.overload = overload  # a sign of a saturated server (429, timeout): fewer requests in flight


class EmptyAnswer(RetryableError):
    """The server answered with no text."""


# Words of a 400/404 body that say the request named a model the server does not serve.
MODEL_MISSING_WORDS = ("does not exist", "not found", "not served", "no such model", "unknown model", "not available")


class OpenAIDescriber(Describer):
    backend = "openai"
    default_concurrency = DEFAULT_CONCURRENCY

    def __init__(
        self,
        urls: Sequence[str],
        model: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        api_key: str | None = None,
        max_tokens: int = MAX_TOKENS,
        ca_bundle: str | None = None,
        insecure: bool = False,
    ):
        if not urls:
            raise LatteclipError("the openai backend needs at least one --lmm-url (e.g. http://localhost:8000/v1)")
        self.pool = EndpointPool([Endpoint.parse(u) for u in urls])
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.api_key = api_key if api_key is not None else api_key_from_environment()
        self.max_tokens = max_tokens
        self.limit = AdaptiveLimit()
        self.headers = self._headers()
        self.timeouts = dict.fromkeys(("connect", "read", "write", "pool"), timeout)
        self.http = ThreadConnections([e.url for e in self.pool.endpoints], certificate_check(ca_bundle, insecure))
        try:
            self.model = self.check_servers(model)
        except LatteclipError:
            self.http.close()
            raise

    def close(self) -> None:
        self.http.close()

    # --- HTTP ------------------------------------------------------------------------------------
    def _headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Accept", b"application/json"),
            (b"User-Agent", b"latteclip"),
        ]
        if self.api_key:
            headers.append((b"Authorization", f"Bearer {self.api_key}".encode("latin-1")))
        return headers

    def _exchange(
        self, endpoint: Endpoint, method: bytes, route: str, body: bytes | None, sent_at: float | None = None
    ) -> tuple[int, bytes, str | None]:
        """(status, body, Retry-After) of one call (the line replaces a kept-alive connection the server has closed)."""
        line = self.http.line(endpoint.url)
        sent_at = time.monotonic() if sent_at is None else sent_at

        try:
            response = line.send(
                method,
                route,
                self.headers,
                body,
                self.timeouts,
                lambda ready: self._await_answer(endpoint, ready, sent_at),
            )
        except TRANSPORT_ERRORS as err:
            certificate = untrusted_certificate(err)
            if certificate is not None:
                raise BackendStopped(
                    f"{endpoint.url}: its TLS certificate is not trusted ({certificate.verify_message}): pass "
                    "--lmm-ca-bundle FILE with the CA that signed it, or --lmm-insecure to skip the check"
                ) from err
            timed_out = isinstance(err, (TimeoutError, httpcore.TimeoutException))
            kind = "timed out" if timed_out else f"connection failed ({type(err).__name__}: {err})"
            raise RetryableError(f"{endpoint.url} {kind}", overload=timed_out) from err
        endpoint.last_answer = time.monotonic()
        retry_after = next((value for name, value in response.headers if name.lower() == b"retry-after"), None)
        return response.status, response.content, retry_after and retry_after.decode("latin-1")

    def _await_answer(self, endpoint: Endpoint, connection: socket.socket, sent_at: float) -> None:
        """Wait for the answer to begin; past the timeout only while the server answers others (then it is a queue,
        and the limiter hears of it once); TimeoutError when it has answered nothing for the whole timeout (raised
        in the transport's read, it ends the request and its connection)."""
        told = False
        while True:
            now = time.monotonic()
            deadline = max(sent_at, endpoint.last_answer) + self.timeout
            if now >= deadline:
                raise TimeoutError(f"no answer within {self.timeout:g} s")
            if not told and now >= sent_at + self.timeout:
                self.limit.overloaded(sent_at)
                told = True
            readable, _, _ = select.select([connection], [], [], min(deadline - now, 0.25))
            if readable:
                return

    def _listed_models(self, endpoint: Endpoint) -> tuple[int, bytes, list[str] | None]:
        """(status, body, the model ids of GET /models or None when the answer holds no list)."""
        status, data, _ = self._exchange(endpoint, b"GET", "/models", None)
        try:
            ids = [str(entry["id"]) for entry in json.loads(data)["data"]] if status == 200 else None
        except (ValueError, KeyError, TypeError):
            ids = None
        return status, data, ids

    def check_servers(self, model: str | None) -> str:
        """The model to ask for, once every reachable server has shown it accepts the key and serves that model."""
        problems: list[str] = []
        reached = False
        for endpoint in self.pool.endpoints:
            try:
                status, data, ids = self._listed_models(endpoint)
            except RetryableError as err:
                problems.append(str(err))
                continue
            except BackendStopped as err:  # an untrusted certificate
                raise LatteclipError(str(err)) from err
            reached = True
            if status in (401, 403):
                raise LatteclipError(
                    f"{endpoint.url} {STOPPING_STATUS[status]} (HTTP {status}: {_snippet(data)}); "
                    f"set the key the server expects in {' or '.join(API_KEY_VARIABLES)}"
                )
            if ids is None:
                problems.append(
                    f"{endpoint.url}/models answered HTTP {status}" + (f": {_snippet(data)}" if status == 200 else "")
                )
            elif not ids:
                raise LatteclipError(
                    f"{endpoint.url} serves no model (GET /models lists none): load a model into the server"
                )
            elif model is None:
                model = ids[0]
            elif model not in ids:
                raise LatteclipError(
                    f"{endpoint.url} does not serve model '{model}'; it serves {', '.join(ids)}: pass --lmm-model "
                    f"{ids[0]}"
                )
        if not reached:
            raise LatteclipError(f"no LMM server answered ({'; '.join(problems)}): start the server or fix --lmm-url")
        if model is None:
            raise LatteclipError(
                f"cannot tell which model the server runs ({'; '.join(problems)}); pass --lmm-model NAME"
            )
        return model

    def _model_missing(self, endpoint: Endpoint, status: int, data: bytes) -> BackendStopped | None:
        """A 400/404 that says the model is not served, naming the models the server lists."""
        if status not in (400, 404):
            return None
        text = data.decode("utf-8", "replace").lower()
        if "model" not in text or not any(words in text for words in MODEL_MISSING_WORDS):
            return None
        try:
            ids = self._listed_models(endpoint)[2]
        except RetryableError:
            ids = None
        served = f"; it serves {', '.join(ids)}" if ids else ""
        return BackendStopped(
            f"{endpoint.url} does not serve model '{self.model}' (HTTP {status}: {_snippet(data)}){served}: pass "
            "--lmm-model with a model it serves"
        )

    def payload(self, request: Request) -> bytes:
        return json.dumps(chat_body(self.model, request, self.max_tokens)).encode("utf-8")

    # --- one request with retries ----------------------------------------------------------------
    def describe(self, requests: Sequence[Request], stop: threading.Event) -> list[str | ItemFailed]:
        return [self.ask(request, stop) for request in requests]

    def ask(self, request: Request, stop: threading.Event) -> str | ItemFailed:
        body = self.payload(request)
        reason = ""
        empty = 0
        for attempt in range(self.retries + 1):
            if stop.is_set():
                return ItemFailed(f"not finished: the run stopped ({reason or 'before an answer'})")
            sent_at = self.limit.acquire(stop)
            if sent_at is None:
                return ItemFailed(f"not finished: the run stopped ({reason or 'before an answer'})")
            endpoint = self.pool.pick()
            try:
                text = self._answer(endpoint, body, sent_at)
            except RetryableError as err:
                if err.overload:
                    self.limit.overloaded(sent_at)
                reason, wait = str(err), err.wait
                empty += isinstance(err, EmptyAnswer)
                if empty == 2:
                    return ItemFailed(f"{reason} twice (at temperature 0 a third try gives the same)")
            except ItemFailed as err:
                return err
            else:
                self.pool.succeeded(endpoint)
                self.limit.succeeded()
                return text
            finally:
                self.limit.release()
            if attempt == self.retries:
                break
            delay = wait if wait is not None else min(self.max_backoff, self.backoff * 2**attempt)
            stop.wait(delay * random.uniform(0.75, 1.25))
        return ItemFailed(f"{reason} (gave up after {self.retries + 1} tries)")

    def _answer(self, endpoint: Endpoint, body: bytes, sent_at: float) -> Answer:
        try:
            status, data, retry_after = self._exchange(endpoint, b"POST", CHAT_ROUTE, body, sent_at)
        except RetryableError:
            self.pool.failed(endpoint)
            raise
        missing = self._model_missing(endpoint, status, data)
        if missing is not None:
            raise missing
        if status in STOPPING_STATUS:
            raise BackendStopped(
                f"{endpoint.url}/chat/completions {STOPPING_STATUS[status]} (HTTP {status}: {_snippet(data)}); "
                f"check --lmm-url, --lmm-model and the key in {' or '.join(API_KEY_VARIABLES)}"
            )
        if status in RETRYABLE_STATUS or status >= 500:
            if status >= 500:
                self.pool.failed(endpoint)
            raise RetryableError(
                f"{endpoint.url} answered HTTP {status}: {_snippet(data)}",
                _seconds(retry_after, self.max_backoff),
                overload=status == 429,
            )
        if status != 200:
            raise ItemFailed(f"{endpoint.url} refused the request (HTTP {status}: {_snippet(data)})")
        try:
            completion = json.loads(data)
            text, finish_reason = answer_text(completion), completion["choices"][0].get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise RetryableError(
                f"{endpoint.url} sent a malformed answer ({type(err).__name__}): {_snippet(data)}"
            ) from err
        if not text:
            raise EmptyAnswer(f"{endpoint.url} sent an empty answer")
        return Answer(text, str(finish_reason) if finish_reason else None)


def _snippet(data: bytes, limit: int = 160) -> str:
    text = data.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")


def _seconds(retry_after: str | None, cap: float) -> float | None:
    try:
        return min(cap, max(0.0, float(retry_after))) if retry_after else None
    except ValueError:
        return None
