"""The one HTTP edge to providers and moderation.

Every upstream POST goes through `post`: requests' own pooled connection, a
connect timeout, no redirects (one could carry the key elsewhere), no
urllib3 retries (a replayed POST would be a second paid call; retries are
ours, before the first word, see upstream/retry.py), no compression.
`translate_errors` is the one place where transport errors become
`ProviderError` (httpx's `map_httpcore_exceptions` is the model).
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import json
import select
import time
from types import TracebackType
from typing import Any

import gevent.monkey
import orjson
import requests
import urllib3
import urllib3.exceptions
from urllib3.util.retry import Retry

from chatapp.errors import ProviderError

# Bounds what an error body may cost us to read.
ERROR_BODY_LIMIT = 16 * 1024
# The longest Retry-After we wait out; a longer one is cut to this.
MAX_RETRY_AFTER = 10.0

_TIMEOUTS = (urllib3.exceptions.TimeoutError, TimeoutError)
# What urllib3 makes of `retries=False, redirect=False` on every call, made
# once: no retries, no redirect followed.
_NO_RETRIES = Retry(False, redirect=False)
# The unpatched poll(2): a zero-timeout poll never blocks, and gevent's
# cooperative one costs ten times as much for the same answer.
_POLL = gevent.monkey.get_original("select", "poll")
_TRANSPORT = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


class translate_errors:  # noqa: N801 - used like contextlib's helpers
    """Turn transport errors into ProviderError; `reading` once headers came.

    A class, not a generator-based context manager: it wraps every network
    read of a stream, and costs a tenth as much.
    """

    __slots__ = ("reading",)

    def __init__(self, *, reading: bool = False) -> None:
        self.reading = reading

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, _TRANSPORT):
            raise _translate(exc, self.reading) from exc


# The same translation for every read of a stream: it holds no state.
READING = translate_errors(reading=True)


def _translate(exc: BaseException, reading: bool) -> ProviderError:
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        # First: urllib3 makes a refused connection a ConnectTimeoutError too.
        return ProviderError(
            "provider_unavailable",
            "Could not reach the provider.",
            retryable=True,
            reason="connect",
        )
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return ProviderError(
            "provider_timeout",
            "Could not connect to the provider in time.",
            retryable=True,
            reason="connect_timeout",
        )
    if isinstance(exc, _TIMEOUTS):
        return ProviderError(
            "provider_timeout",
            "The provider went silent."
            if reading
            else "Could not connect to the provider in time.",
            retryable=True,
            reason="timeout",
        )
    return ProviderError(
        "provider_unavailable",
        "The connection to the provider dropped."
        if reading
        else "Could not reach the provider.",
        retryable=True,
        reason="reset",
    )


def upstream_pool(session: requests.Session, url: str) -> Any:
    """Return the connection pool requests would use for `url`, TLS set up.

    Preparing a request per turn (cookies, hooks, settings merged from the
    environment) cost more CPU than the whole answer's decoding; the pool is
    the same one requests sends through, with the same TLS verification.
    Its connections check whether a kept-alive socket was dropped with the
    plain poll(2) (`_QuickCheck`).
    """
    prepared = requests.Request("POST", url).prepare()
    adapter: Any = session.get_adapter(url)
    pool = adapter.get_connection_with_tls_context(
        prepared, verify=True, proxies=None, cert=None
    )
    pool.ConnectionCls = _quick_check(pool.ConnectionCls)
    return pool


class _QuickCheck:
    """urllib3's test of a pooled connection, without gevent's poll.

    Before reusing a kept-alive connection the pool asks `is_connected`:
    urllib3 polls the socket for reading with a zero timeout (readable means
    closed, or bytes nobody asked for). The same poll, unpatched: 0.7 us
    against 13.6 us (and about 60 us in a busy worker's profile).
    """

    sock: Any

    @property
    def is_connected(self) -> bool:
        if self.sock is None:
            return False
        poller = _POLL()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)


@functools.cache
def _quick_check(connection_cls: type) -> type:
    if issubclass(connection_cls, _QuickCheck):
        return connection_cls
    return type(connection_cls.__name__, (_QuickCheck, connection_cls), {})


@functools.cache
def _timeout(connect: float, read: float | None) -> urllib3.Timeout:
    # urllib3 copies the Timeout it is given: one per pair serves every call.
    return urllib3.Timeout(connect=connect, read=read)


def post(
    pool: Any,
    path: str,
    *,
    headers: dict[str, str],
    body: dict[str, Any],
    connect_timeout: float,
    read_timeout: float | None = None,
) -> Any:
    """POST JSON and return the response with its body unread."""
    with translate_errors():
        return pool.urlopen(
            "POST",
            path,
            body=json_body(body),
            headers=headers,
            # Streams are watched by the relay's watchdog, not by a timer
            # per socket read (read_timeout None).
            timeout=_timeout(connect_timeout, read_timeout),
            redirect=False,
            retries=_NO_RETRIES,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
        )


def json_body(body: dict[str, Any]) -> bytes:
    """Encode a request body: orjson's UTF-8 (0.3 us against json.dumps' 3.6).

    orjson refuses a lone surrogate in a string, which the standard library
    writes as an escape: such a body takes the slow path.
    """
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()


def request_path(url: str) -> str:
    """Return the path and query of `url`, as `post` wants it."""
    return str(urllib3.util.parse_url(url).request_uri)


def read_error_body(response: Any) -> Any:
    """Read a refusal's JSON body, bounded; None when it is not JSON."""
    try:
        with translate_errors(reading=True):
            data = response.read(ERROR_BODY_LIMIT + 1)
    except ProviderError:
        return None
    finally:
        response.close()
    if len(data) > ERROR_BODY_LIMIT:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def retry_after(value: str | None) -> float | None:
    """Read a Retry-After header (seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


def status_error(status: int, after: float | None = None) -> ProviderError:
    """Map an upstream HTTP status to SPEC's error event."""
    if status in (401, 403):
        return ProviderError("provider_error", "The provider refused our credentials.")
    if status == 404:
        return ProviderError(
            "provider_error", "The provider does not know this model or URL."
        )
    if status == 429:
        return ProviderError(
            "provider_rate_limited",
            "The provider is rate limiting us; try again shortly.",
            retryable=True,
            reason="429",
            retry_after=after,
        )
    if status in (408, 504):
        return ProviderError(
            "provider_timeout",
            "The provider timed out.",
            retryable=True,
            reason="5xx",
            retry_after=after,
        )
    if status >= 500:
        return ProviderError(
            "provider_unavailable",
            "The provider is unavailable or overloaded; try again shortly.",
            retryable=True,
            reason="529" if status == 529 else "5xx",
            retry_after=after,
        )
    # A redirect lands here too: it is never followed.
    return ProviderError(
        "provider_error", f"The provider refused the request ({status})."
    )


# Request fields a model may refuse by name; the OpenAI provider then asks
# once more with the other form (upstream/openai_compat.py).
ADJUSTABLE = ("max_tokens", "max_completion_tokens", "temperature")


class UnsupportedParameter(ProviderError):
    """The provider refused a request field by name (400 before any answer)."""

    def __init__(self, param: str) -> None:
        super().__init__(
            "provider_error", f"The provider refused the parameter {param!r}."
        )
        self.param = param


def bad_request(body: Any) -> ProviderError:
    """Read a 400: name the refused parameter when the provider did."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        param = error.get("param")
        message = str(error.get("message") or "")
        if param not in ADJUSTABLE:
            # Some servers name the field only in the message.
            param = next((p for p in ADJUSTABLE if f"'{p}'" in message), None)
        code = error.get("code")
        if param and code in (None, "unsupported_parameter", "unsupported_value"):
            return UnsupportedParameter(str(param))
    return status_error(400)
