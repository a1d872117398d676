"""The connections of the `openai` describer: httpcore (the HTTP engine inside httpx, by the same maintainers) driven
directly, one kept-alive connection per runner thread and server.

Why not httpx's Client on top of it: per request it builds URL, header, cookie and auth objects, picks a proxy
mount and walks its redirect and event hooks, which cost about as much CPU as all the rest of the client's work; at
64 requests in flight on two cores the client, not the server, set the pace (benchmarks/describe_throughput.py).
What the Client gave us is kept here: proxies from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
`NO_PROXY`, in either case), read with the standard library's `urllib.request` as httpx reads them, but once per
server instead of once per request; the certificate check (the system's trust store, a `--lmm-ca-bundle` file, or
none with `--lmm-insecure`); and connection pooling, with a connection the server has closed replaced by a new one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import httpcore

from latteclip.errors import LatteclipError

# What a request that got no answer raises: httpcore's failures (a connection refused, dropped or timed out, a
# proxy's refusal, a broken answer), and TimeoutError from the wait for the answer to begin.
TRANSPORT_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    TimeoutError,
)


def certificate_check(ca_bundle: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """How servers' certificates are checked: the system's trust store as `http.client` did (OpenSSL honours
    SSL_CERT_FILE / SSL_CERT_DIR), only the CA bundle given (a gateway on an internal CA), or not at all."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as err:
        raise LatteclipError(
            f"--lmm-ca-bundle {ca_bundle} is not a readable PEM file of CA certificates ({err}): "
            "give the file of the CA that signed the server's certificate"
        ) from err


def untrusted_certificate(err: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate failure behind a connection error (httpcore wraps ssl's), if any."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    return cause


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for this server's URL, or None when it is reached directly (no proxy
    variable for its scheme, or `NO_PROXY` names it)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class OneWriteStream(httpcore.NetworkStream):
    """httpcore's socket stream, where a request leaves in one send and its answer is awaited by the describer's rule.

    httpcore writes a request's headers and body apart: two sends (two system calls, and two segments for the server
    to read; http.client sent one). Writes wait here until the answer is read, then leave as one; then, before the
    first read, the backend's `await_answer` (when set) waits for the answer to begin.
    """

    def __init__(self, stream: httpcore.NetworkStream, backend: OneWriteBackend):
        self._stream = stream
        self._backend = backend
        self._pending: list[bytes] = []

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._pending.append(buffer)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._pending:
            self._send(timeout)
            if self._backend.await_answer is not None:
                self._backend.await_answer(self._stream.get_extra_info("socket"))
        return self._stream.read(max_bytes, timeout)

    def _send(self, timeout: float | None) -> None:
        """Send what is waiting. A failed write is let pass, as httpcore does for a request: a server may close a
        request early yet answer it (its answer, or the failure, comes with the read)."""
        data = b"".join(self._pending)
        self._pending.clear()
        with contextlib.suppress(httpcore.WriteError):
            self._stream.write(data, timeout)

    def close(self) -> None:
        self._pending.clear()
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> OneWriteStream:
        if self._pending:
            self._send(timeout)
        return OneWriteStream(self._stream.start_tls(ssl_context, server_hostname, timeout), self._backend)

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class OneWriteBackend(httpcore.SyncBackend):
    """httpcore's network backend, its connections' streams made `OneWriteStream`s; one per line (one thread), so
    `await_answer` is the wait of that line's current request (None: httpcore's read timeout alone)."""

    def __init__(self) -> None:
        self.await_answer: Callable[[socket.socket], None] | None = None

    def connect_tcp(self, *args: object, **kwargs: object) -> OneWriteStream:
        return OneWriteStream(super().connect_tcp(*args, **kwargs), self)

    def connect_unix_socket(self, *args: object, **kwargs: object) -> OneWriteStream:
        return OneWriteStream(super().connect_unix_socket(*args, **kwargs), self)


def connection_pool(proxy: str | None, context: ssl.SSLContext, backend: OneWriteBackend) -> httpcore.ConnectionPool:
    """What makes a line's connection to a server: httpcore's pool, or its HTTP or SOCKS proxy pool when `proxy` is
    given (each pool's `create_connection` makes the kind of connection it would hold)."""
    options = {
        "ssl_context": context,
        "max_connections": 1,
        "max_keepalive_connections": 1,
        "network_backend": backend,
    }
    if proxy is None:
        return httpcore.ConnectionPool(**options)
    parts = urlsplit(proxy)
    try:
        port = parts.port
    except ValueError as err:
        raise LatteclipError(f"the proxy {proxy} of the environment has a bad port: {err}") from err
    if not parts.hostname or parts.scheme not in ("http", "https", "socks5", "socks5h"):
        raise LatteclipError(
            f"the proxy {proxy} of the environment is not an http(s):// or socks5:// URL: fix HTTPS_PROXY / "
            "HTTP_PROXY / ALL_PROXY, or name the server in NO_PROXY"
        )
    url = httpcore.URL(scheme=parts.scheme.encode(), host=parts.hostname.encode(), port=port, target=b"/")
    auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
    if parts.scheme.startswith("socks"):
        if importlib.util.find_spec("socksio") is None:  # httpcore speaks SOCKS through it
            raise LatteclipError(f"the proxy {proxy} of the environment is a SOCKS proxy: pip install socksio")
        return httpcore.SOCKSProxy(proxy_url=url, proxy_auth=auth, **options)
    return httpcore.HTTPProxy(proxy_url=url, proxy_auth=auth, **options)


@dataclass
class Line:
    """One thread's connection to one server.

    The line holds its one connection itself rather than asking `pool` for it on each request: the pool only makes
    it (a direct one, or one through the environment's proxy, as its `create_connection` decides). A pool queues
    each request, looks over its connections and wraps each answer in a stream of its own, which for one connection
    used by one thread is pure cost.
    """

    pool: httpcore.ConnectionPool
    backend: OneWriteBackend  # the pool's network backend
    base: str  # the server's base URL
    _urls: dict[str, httpcore.URL] = field(default_factory=dict)
    _connection: httpcore.ConnectionInterface | None = None

    def send(
        self,
        method: bytes,
        route: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        timeouts: dict[str, float],
        await_answer: Callable[[socket.socket], None],
    ) -> httpcore.Response:
        """One request and its whole answer, `await_answer` called with the connection's socket once the request has
        left (httpcore's `request()` with the URL parsed once and the headers checked once rather than twice)."""
        url = self._urls.get(route)
        if url is None:
            url = self._urls[route] = httpcore.URL(self.base + route)
        host = b"[%b]" % url.host if b":" in url.host else url.host  # an IPv6 address
        headers = [(b"Host", host if url.port is None else b"%b:%d" % (host, url.port)), *headers]
        if body is not None:
            headers.append((b"Content-Length", b"%d" % len(body)))
        request = httpcore.Request(method, url, headers=headers, content=body, extensions={"timeout": timeouts})
        self.backend.await_answer = await_answer
        try:
            response = self._connected(url.origin).handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        finally:
            self.backend.await_answer = None
        return response

    def _connected(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        """The kept-alive connection, replaced (as httpcore's pool does) once it is closed, failed to connect, or the
        server has closed its end while it was idle."""
        connection = self._connection
        if connection is not None and (connection.is_closed() or connection.has_expired()):
            connection.close()
            connection = None
        if connection is None:
            connection = self._connection = self.pool.create_connection(origin)
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class ThreadConnections:
    """A connection per runner thread and server: as many connections as requests in flight, and nothing shared
    between threads (httpcore's pool looks at every connection and every waiting request each time one is sent or
    answered, which at 64 in flight would cost more CPU than all the rest of the stage)."""

    def __init__(self, urls: list[str], context: ssl.SSLContext):
        self.proxies = {url: environment_proxy(url) for url in urls}
        self.context = context
        self.lines: list[Line] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        for proxy in set(self.proxies.values()):  # a bad proxy fails here, before any request
            connection_pool(proxy, context, OneWriteBackend()).close()

    def line(self, url: str) -> Line:
        """This thread's connection to the server at `url`."""
        lines = getattr(self._local, "lines", None)
        if lines is None:
            lines = self._local.lines = {}
        if url not in lines:
            backend = OneWriteBackend()
            lines[url] = Line(connection_pool(self.proxies[url], self.context, backend), backend, url)
            with self._lock:
                self.lines.append(lines[url])
        return lines[url]

    def close(self) -> None:
        with self._lock:
            for line in self.lines:
                line.close()
            self.lines.clear()
