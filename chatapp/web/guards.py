"""WSGI middleware at the socket's edge: body deadlines and trusted proxies.

BodyDeadline reads a request's whole body before the app sees it, under one
deadline, so a client that sends its body slowly (or never) holds a
connection for at most that long; a body that is malformed on the wire (a bad
chunk size) becomes a 400 instead of an exception deep inside a view. It
only marks the environ; the app answers (``body_refusal``) so the refusal
passes through the same hooks as every other response.

TrustedPeers drops X-Forwarded-* headers that did not come from a trusted
proxy, before ProxyFix believes them.
"""

from __future__ import annotations

import io
import ipaddress
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

import gevent
from gunicorn.http.errors import ParseException

from chatapp.errors import ChatappError
from chatapp.settings.parse import Network

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

REFUSAL = "chatapp.body_refusal"
READ_SIZE = 64 * 1024

_FORWARDED = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PREFIX",
    "HTTP_FORWARDED",
)


class BodyTooSlow(ChatappError):
    """The body did not arrive before the deadline."""


class BodyDeadline:
    """Read each request body within `seconds`, at most `max_bytes` of it.

    `larger` names the few paths that take bigger bodies (the owner's
    document pushes), with their own bound.
    """

    def __init__(
        self,
        app: WSGIApp,
        seconds: float,
        max_bytes: int,
        larger: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.larger = dict(larger or {})

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        length = _content_length(environ)
        most = self.larger.get(environ.get("PATH_INFO", ""), self.max_bytes)
        if chunked or (length is not None and 0 < length <= most):
            refusal, body = self._read(environ["wsgi.input"], length, most)
            if refusal is not None:
                environ[REFUSAL] = refusal
                body = b""
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _read(
        self, stream: Any, length: int | None, most: int
    ) -> tuple[tuple[int, str, str] | None, bytes]:
        want = most + 1 if length is None else length
        parts: list[bytes] = []
        got = 0
        try:
            with gevent.Timeout(self.seconds, BodyTooSlow):
                while got < want:
                    data = stream.read(min(READ_SIZE, want - got))
                    if not data:
                        break
                    parts.append(data)
                    got += len(data)
        except BodyTooSlow:
            return (408, "request_timeout", "The request body came too slowly."), b""
        except (ParseException, OSError, ValueError):
            # A malformed chunk size or terminator, or a connection cut short.
            return (400, "invalid_input", "The request body is malformed."), b""
        if got > most:
            return (413, "payload_too_large", "The request body is too large."), b""
        if length is not None and got < length:
            return (400, "invalid_input", "The request body ended early."), b""
        return None, b"".join(parts)


def _content_length(environ: dict[str, Any]) -> int | None:
    raw = environ.get("CONTENT_LENGTH") or ""
    return int(raw) if raw.isascii() and raw.isdigit() else None


def body_refusal(environ: dict[str, Any]) -> tuple[int, str, str] | None:
    """Return (status, code, message) when BodyDeadline refused the body."""
    refusal: tuple[int, str, str] | None = environ.get(REFUSAL)
    return refusal


class TrustedPeers:
    """Drop forwarding headers unless the peer is one of the trusted proxies."""

    def __init__(self, app: WSGIApp, networks: tuple[Network, ...]) -> None:
        self.app = app
        self.networks = networks

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not self.trusted(environ.get("REMOTE_ADDR")):
            for name in _FORWARDED:
                environ.pop(name, None)
        return self.app(environ, start_response)

    def trusted(self, address: str | None) -> bool:
        """Tell whether `address` is one of the trusted proxies."""
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)
