"""What every describer (HTTP server, in-process model, offline substitute) looks like to the runner.

A describer answers a batch of requests with one outcome each: the text, or an `ItemFailed`
that says why this one request got no answer. `BackendStopped` means no request can succeed
(wrong URL, bad key, missing model): the runner stops at once instead of failing every image.
"""

from __future__ import annotations

import base64
import io
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

# LMM servers accept these as data URLs; other formats are re-encoded
SENDABLE_FORMATS = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}
JPEG_QUALITY = 95  # re-encoded pictures (collages): faithful, and ~20x faster to write than PNG at 672x672


@dataclass(frozen=True)
class Request:
    """One question to the LMM: a picture and a prompt, or a prompt alone (`image` None: a class's description).

    `encoded` is the original file when it can be sent as is (no re-encoding cost, no loss);
    `parts` are a group's own images, for describers that look at members one by one;
    `response_format` is the OpenAI constraint on the answer (a JSON schema), for servers that accept it.
    """

    image: Image.Image | None
    prompt: str
    encoded: bytes | None = None
    parts: tuple[Image.Image, ...] = ()
    response_format: dict | None = None

    def data_url(self) -> str:
        data, mime = self.encoded_bytes()
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def encoded_bytes(self) -> tuple[bytes, str]:
        if self.encoded is not None:
            mime = sendable_mime(self.encoded)
            if mime:
                return self.encoded, mime
        buffer = io.BytesIO()
        self.image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue(), "image/jpeg"


def sendable_mime(data: bytes) -> str | None:
    for magic, mime in SENDABLE_FORMATS.items():
        if data.startswith(magic):
            return mime
    return None


class Answer(str):
    """An answer's text, with why the model stopped (`finish_reason`: "stop", or "length" for a text cut at the token
    limit)."""

    finish_reason: str | None = None

    def __new__(cls, text: str, finish_reason: str | None = None) -> Answer:
        answer = super().__new__(cls, text)
        answer.finish_reason = finish_reason
        return answer


class ItemFailed(Exception):
    """This request got no usable answer (after the backend's own retries)."""


class BackendStopped(Exception):
    """No request can succeed with this configuration; the message says what to fix."""


class Describer(ABC):
    backend: str = ""
    model: str = ""
    batch_size: int = 1  # requests per `describe` call
    default_concurrency: int = 1  # calls in flight at once

    @abstractmethod
    def describe(self, requests: Sequence[Request], stop: threading.Event) -> list[str | ItemFailed]:
        """One outcome per request, in order. Waits (back-off) end early when `stop` is set."""

    def close(self) -> None:  # noqa: B027  (optional hook: most describers hold nothing)
        """Release connections or memory."""
