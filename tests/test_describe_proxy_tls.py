"""The `openai` describer where users are: behind an HTTP proxy named by the environment, and in front of a server
whose certificate an internal CA signed.

The proxy is a real one (proxy.py from PyPI, a process of its own on 127.0.0.1). It adds `Via: 1.1 proxy.py ...` to
the first request of each connection it forwards (later ones on a kept-alive connection it passes as they are), and
the test server records the peer and headers of every request. A connection comes from one peer, so a run went
through the proxy when the first request of every connection the server accepted carries that header, and around
it when no request does. NO_PROXY is removed for the proxied run: the client sends even 127.0.0.1 to the proxy unless
NO_PROXY names it. Which proxy a server takes is also read back for hand-picked variables (scheme, ALL_PROXY, case,
NO_PROXY by name, suffix and port), and a proxy variable the client cannot use stops it before any request.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latteclip.cli import main
from latteclip.data import build_dataset
from latteclip.describe.jobs import image_hashes
from latteclip.describe.openai_http import OpenAIDescriber
from latteclip.describe.prompts import load_prompts
from latteclip.describe.store import DescriptionStore
from latteclip.describe.transport import environment_proxy
from latteclip.errors import LatteclipError
from tests.conftest import describe_argv
from tests.lmm_server import FakeLMMServer, expected_answer

pytest.importorskip("proxy", reason="the proxy test needs proxy.py: pip install -e '.[test]'")
trustme = pytest.importorskip("trustme", reason="the TLS test needs trustme: pip install -e '.[test]'")

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def describe_args(eurosat_folder: Path, store: Path, url: str, *extra: str) -> list[str]:
    return describe_argv(eurosat_folder, *extra, kinds="image", store=store, lmm="openai", lmm_url=url, concurrency=4)


@pytest.fixture
def no_proxy_settings(monkeypatch):
    """A clean slate: none of the proxy variables, in either case, from the machine running the tests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@contextlib.contextmanager
def running_proxy(folder: Path, *flags: str):
    """proxy.py listening on a free port of 127.0.0.1 (with `flags`); its URL."""
    port_file = folder / "proxy.port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--num-workers",
            "1",
            "--num-acceptors",
            "1",
            "--log-file",
            str(folder / "proxy.log"),
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert process.poll() is None and time.monotonic() < deadline, "proxy.py did not start (see proxy.log)"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def http_proxy(tmp_path):
    """proxy.py listening on a free port of 127.0.0.1; its URL."""
    with running_proxy(tmp_path) as url:
        yield url


def first_vias(arrivals: list[tuple[tuple[str, int], dict]]) -> dict[tuple[str, int], str | None]:
    """The Via header of the first request on each connection the server accepted (by peer address)."""
    first: dict[tuple[str, int], str | None] = {}
    for peer, headers in arrivals:
        first.setdefault(peer, headers.get("Via"))
    return first


def test_every_request_goes_through_the_proxy_of_the_environment(
    eurosat_folder, tmp_path, http_proxy, no_proxy_settings
):
    train = build_dataset("eurosat", eurosat_folder, "train")
    hashes = image_hashes(train, progress=False)
    prompt = load_prompts(train.info.prompts).description("image", train.info.domain)
    with FakeLMMServer() as server:
        no_proxy_settings.setenv("HTTP_PROXY", http_proxy)
        assert main(describe_args(eurosat_folder, tmp_path / "proxied.sqlite", server.url)) == 0
        proxied = list(server.arrivals)
        # the server's every request, the model check and one per image, came on a connection proxy.py opened
        assert len(proxied) == 1 + len(set(hashes)) == 1 + len(server.seen)
        connections = first_vias(proxied)
        assert connections and all(via and via.startswith("1.1 proxy.py") for via in connections.values()), connections
        with DescriptionStore(tmp_path / "proxied.sqlite") as store:
            assert store.get_texts(hashes, "image", model="fake-llava") == [expected_answer(h, prompt) for h in hashes]

        # the same run with NO_PROXY naming the server goes around the proxy: no request carries its header
        no_proxy_settings.setenv("NO_PROXY", "127.0.0.1")
        assert main(describe_args(eurosat_folder, tmp_path / "direct.sqlite", server.url)) == 0
        direct = server.arrivals[len(proxied) :]
        assert len(direct) == 1 + len(set(hashes)) and {headers.get("Via") for _, headers in direct} == {None}


def test_the_proxy_gets_the_credentials_of_its_url(eurosat_folder, tmp_path, capsys, no_proxy_settings):
    """`HTTP_PROXY=http://user:password@host:port`, the password percent-encoded as URLs need, logs in to a proxy that
    asks for them; without them the proxy refuses (407) and the run stops at the model check."""
    with running_proxy(tmp_path, "--basic-auth", "latte:s3cr@t") as proxy, FakeLMMServer() as server:
        login = proxy.replace("http://", "http://latte:s3cr%40t@")
        no_proxy_settings.setenv("HTTP_PROXY", login)
        assert main(describe_args(eurosat_folder, tmp_path / "in.sqlite", server.url)) == 0
        answered = len(server.arrivals)
        assert answered > 1 and all(
            via and via.startswith("1.1 proxy.py") for via in first_vias(server.arrivals).values()
        )

        no_proxy_settings.setenv("HTTP_PROXY", proxy)
        capsys.readouterr()
        assert main(describe_args(eurosat_folder, tmp_path / "out.sqlite", server.url)) == 2
        assert len(server.arrivals) == answered
        assert "answered HTTP 407" in capsys.readouterr().err


def test_each_scheme_takes_its_own_proxy_and_no_proxy_names_the_exceptions(no_proxy_settings):
    no_proxy_settings.setenv("HTTPS_PROXY", "http://secure.proxy:3128")
    no_proxy_settings.setenv("HTTP_PROXY", "plain.proxy:8080")  # no scheme: an http proxy, as curl reads it
    no_proxy_settings.setenv("NO_PROXY", "internal.example, 10.0.0.1:8000")
    assert environment_proxy("https://api.example.com/v1") == "http://secure.proxy:3128"
    assert environment_proxy("http://api.example.com/v1") == "http://plain.proxy:8080"
    assert environment_proxy("http://internal.example/v1") is None
    assert environment_proxy("http://gpu3.internal.example:8000/v1") is None  # a name under it too
    assert environment_proxy("http://10.0.0.1:8000/v1") is None
    assert environment_proxy("http://10.0.0.1:9000/v1") == "http://plain.proxy:8080"  # another port of that host
    assert environment_proxy("http://127.0.0.1:8000/v1") == "http://plain.proxy:8080"  # not even localhost is exempt


def test_all_proxy_serves_the_schemes_without_their_own_and_lower_case_wins(no_proxy_settings):
    no_proxy_settings.setenv("ALL_PROXY", "http://every.proxy:3128")
    no_proxy_settings.setenv("HTTPS_PROXY", "http://upper.proxy:3128")
    no_proxy_settings.setenv("https_proxy", "http://lower.proxy:3128")
    assert environment_proxy("http://api.example.com/v1") == "http://every.proxy:3128"
    assert environment_proxy("https://api.example.com/v1") == "http://lower.proxy:3128"
    no_proxy_settings.setenv("NO_PROXY", "*")
    assert environment_proxy("https://api.example.com/v1") is None


@pytest.mark.parametrize(
    "proxy, message",
    [
        ("ftp://files.proxy:21", "is not an http(s):// or socks5:// URL"),
        ("http://plain.proxy:port", "has a bad port"),
        pytest.param(
            "socks5://tunnel:1080",
            "pip install socksio",
            marks=pytest.mark.skipif(importlib.util.find_spec("socksio") is not None, reason="socksio is installed"),
        ),
    ],
)
def test_a_proxy_it_cannot_use_stops_it_before_any_request(no_proxy_settings, proxy, message):
    no_proxy_settings.setenv("HTTP_PROXY", proxy)
    with FakeLMMServer() as server:
        with pytest.raises(LatteclipError) as refused:
            OpenAIDescriber([server.url])
        assert server.arrivals == []
    assert proxy in str(refused.value) and message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """An internal CA and a certificate it signed for 127.0.0.1: (the CA's PEM file, the server's key and chain)."""
    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(folder / "ca.pem"))
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    return folder / "ca.pem", folder / "server.pem"


def test_a_server_on_an_internal_ca_needs_its_bundle_or_insecure(
    eurosat_folder, tmp_path, certificates, capsys, no_proxy_settings
):
    ca, server_pem = certificates
    with FakeLMMServer(certificate=str(server_pem)) as server:
        assert server.url.startswith("https://")
        capsys.readouterr()
        assert main(describe_args(eurosat_folder, tmp_path / "refused.sqlite", server.url)) == 2
        printed = capsys.readouterr().err.replace("\r", "\n").splitlines()  # the progress bars, then the error
        errors = [line for line in printed if line.startswith("error:")]
        assert len(errors) == 1 and printed[-1] == errors[0], printed
        error = errors[0]
        assert "TLS certificate is not trusted" in error
        assert "--lmm-ca-bundle FILE" in error and "--lmm-insecure" in error
        assert server.arrivals == []

        with_bundle = describe_args(eurosat_folder, tmp_path / "bundle.sqlite", server.url, "--lmm-ca-bundle", str(ca))
        assert main(with_bundle) == 0
        answered = len(server.seen)
        with DescriptionStore(tmp_path / "bundle.sqlite") as store:
            assert answered == len({row["image_hash"] for row in store.rows()}) > 0

        assert main(describe_args(eurosat_folder, tmp_path / "insecure.sqlite", server.url, "--lmm-insecure")) == 0
        assert len(server.seen) == 2 * answered


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lmm-ca-bundle", "{ca}", "--lmm-insecure"], "pass one"),
        (["--lmm-ca-bundle", "{missing}"], "is not a file"),
        (["--lmm-ca-bundle", "{not_pem}"], "is not a readable PEM file"),
    ],
)
def test_tls_options_are_checked_first(eurosat_folder, tmp_path, certificates, capsys, flags, message):
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    names = {
        "ca": str(certificates[0]),
        "missing": str(tmp_path / "missing.pem"),
        "not_pem": str(tmp_path / "notes.txt"),
    }
    argv = describe_args(
        eurosat_folder, tmp_path / "d.sqlite", "https://127.0.0.1:9/v1", *[flag.format(**names) for flag in flags]
    )
    assert main(argv) == 2
    assert message in capsys.readouterr().err
