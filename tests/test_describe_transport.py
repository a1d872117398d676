"""Which proxy the `openai` describer's connections take, read from the environment once per server, and the one-line
refusal of a proxy variable it cannot use (before any request is sent)."""

from __future__ import annotations

import importlib.util

import pytest

from latteclip.describe.openai_http import OpenAIDescriber
from latteclip.describe.transport import environment_proxy
from latteclip.errors import LatteclipError
from tests.lmm_server import FakeLMMServer

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")


@pytest.fixture
def environment(monkeypatch):
    """None of the proxy variables, in either case, from the machine running the tests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_each_scheme_takes_its_own_proxy_and_no_proxy_names_the_exceptions(environment):
    environment.setenv("HTTPS_PROXY", "http://secure.proxy:3128")
    environment.setenv("HTTP_PROXY", "plain.proxy:8080")  # no scheme: an http proxy, as curl reads it
    environment.setenv("NO_PROXY", "internal.example, 10.0.0.1:8000")
    assert environment_proxy("https://api.example.com/v1") == "http://secure.proxy:3128"
    assert environment_proxy("http://api.example.com/v1") == "http://plain.proxy:8080"
    assert environment_proxy("http://internal.example/v1") is None
    assert environment_proxy("http://gpu3.internal.example:8000/v1") is None  # a name under it too
    assert environment_proxy("http://10.0.0.1:8000/v1") is None
    assert environment_proxy("http://10.0.0.1:9000/v1") == "http://plain.proxy:8080"  # another port of that host
    assert environment_proxy("http://127.0.0.1:8000/v1") == "http://plain.proxy:8080"  # not even localhost is exempt


def test_all_proxy_serves_the_schemes_without_their_own_and_lower_case_wins(environment):
    environment.setenv("ALL_PROXY", "http://every.proxy:3128")
    environment.setenv("HTTPS_PROXY", "http://upper.proxy:3128")
    environment.setenv("https_proxy", "http://lower.proxy:3128")
    assert environment_proxy("http://api.example.com/v1") == "http://every.proxy:3128"
    assert environment_proxy("https://api.example.com/v1") == "http://lower.proxy:3128"
    environment.setenv("NO_PROXY", "*")
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
def test_a_proxy_it_cannot_use_stops_it_before_any_request(environment, proxy, message):
    environment.setenv("HTTP_PROXY", proxy)
    with FakeLMMServer() as server:
        with pytest.raises(LatteclipError) as refused:
            OpenAIDescriber([server.url])
        assert server.arrivals == []
    assert proxy in str(refused.value) and message in str(refused.value)
    assert "\n" not in str(refused.value)
