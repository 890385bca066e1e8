"""The HTTP edge shared by the SSE-speaking providers.

Owns the upstream request: timeouts, status mapping, incremental decoding and
closing the connection whatever happens. Transport errors leave here only as
ProviderError.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any
from typing import ClassVar

import gevent
import requests
import urllib3.exceptions

from chatapp.errors import ProviderError
from chatapp.sse_decoder import ServerSentEvent
from chatapp.sse_decoder import SSEDecodeError
from chatapp.sse_decoder import SSEDecoder
from chatapp.text import scrub_parsed

READ_SIZE = 64 * 1024
# After the last event a body ends at once; never wait long for it.
DRAIN_SECONDS = 1.0
# Bounds what an error body may cost us to read.
ERROR_BODY_LIMIT = 16 * 1024
EVENT_STREAM = "text/event-stream"

_TIMEOUTS = (
    requests.exceptions.ReadTimeout,
    urllib3.exceptions.ReadTimeoutError,
    TimeoutError,
)
_TRANSPORT = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
)


def status_error(status: int) -> ProviderError:
    """Map an upstream HTTP status to SPEC's error event."""
    if 300 <= status < 400:  # harden #11: redirects are not followed
        return ProviderError(
            "provider_error", f"The provider redirected the request ({status})."
        )
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
        )
    if status in (408, 504):
        return ProviderError(
            "provider_timeout", "The provider timed out.", retryable=True
        )
    if status >= 500:
        return ProviderError(
            "provider_unavailable",
            "The provider is unavailable or overloaded; try again shortly.",
            retryable=True,
        )
    return ProviderError(
        "provider_error", f"The provider refused the request ({status})."
    )


def parse_json(data: str) -> dict[str, Any]:
    """Parse one event's JSON data, or fail the turn with provider_error."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ProviderError(
            "provider_error", "The provider sent malformed data."
        ) from exc
    if not isinstance(value, dict):
        raise ProviderError("provider_error", "The provider sent malformed data.")
    # harden #11: an escaped lone surrogate ("\\ud800") becomes U+FFFD here,
    # or no frame, poll answer or history entry holding it could be encoded.
    return dict(scrub_parsed(data, value))


def event_batches(
    session: requests.Session,
    url: str,
    *,
    headers: dict[str, str],
    body: dict[str, Any],
    connect_timeout: float,
    idle_timeout: float,
) -> Generator[list[ServerSentEvent]]:
    """POST and yield the SSE events each network read completes."""
    response: requests.Response | None = None
    complete = False
    try:
        try:
            response = session.post(
                url,
                json=body,
                headers=headers,
                stream=True,
                timeout=(connect_timeout, idle_timeout),
                # harden #11: never follow; a redirect would carry the key
                # (x-api-key survives a change of host) elsewhere.
                allow_redirects=False,
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise ProviderError(
                "provider_timeout",
                "Could not connect to the provider in time.",
                retryable=True,
            ) from exc
        except _TIMEOUTS as exc:
            raise ProviderError(
                "provider_timeout",
                "The provider did not answer in time.",
                retryable=True,
            ) from exc
        except _TRANSPORT as exc:
            raise ProviderError(
                "provider_unavailable", "Could not reach the provider.", retryable=True
            ) from exc
        if response.status_code != 200:
            raise status_error(response.status_code)
        # harden #11: a 200 that is no event stream (a proxy's HTML page) is
        # the provider's error, not a connection that dropped.
        if (
            not response.headers.get("Content-Type", "")
            .lower()
            .startswith(EVENT_STREAM)
        ):
            raise ProviderError(
                "provider_error", "The provider did not answer with an event stream."
            )
        decoder = SSEDecoder()
        while True:
            try:
                # harden #11: decode a gzip-compressed stream (requests asks
                # for one; a proxy may compress); read1 decodes incrementally.
                data = response.raw.read1(READ_SIZE, decode_content=True)
            except _TIMEOUTS as exc:
                raise ProviderError(
                    "provider_timeout", "The provider went silent.", retryable=True
                ) from exc
            except _TRANSPORT as exc:
                raise ProviderError(
                    "provider_unavailable",
                    "The connection to the provider dropped.",
                    retryable=True,
                ) from exc
            if not data:
                complete = True
                return
            try:
                events = decoder.feed(data)
            except SSEDecodeError as exc:
                raise ProviderError(
                    "provider_error", "The provider sent an oversized line."
                ) from exc
            if events:
                yield events
    finally:
        if response is not None:
            if complete:
                # Read to its end: the connection goes back to the pool.
                response.raw.release_conn()
            else:
                # Closing (not releasing) drops the socket, so the provider
                # sees the cancel at once and stops generating.
                response.close()


def read_to_end(batches: Generator[list[ServerSentEvent]]) -> None:
    """Read what is left of a finished answer, so its connection is reused."""
    try:
        with gevent.Timeout(DRAIN_SECONDS, False):
            for _ in batches:
                pass
    except ProviderError:
        pass  # the answer was complete; the connection is simply not reused


class SSEProvider:
    """Base of the providers that answer POST with an event stream."""

    name: str
    path: ClassVar[str]  # appended to the base URL

    def __init__(
        self,
        *,
        session: requests.Session,
        base_url: str,
        api_key: str,
        connect_timeout: float,
        idle_timeout: float,
    ) -> None:
        self._session = session
        self._url = base_url + self.path
        self._headers = {"Accept": "text/event-stream", **self.auth_headers(api_key)}
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Return the headers that carry the key and the API version."""
        raise NotImplementedError

    def events(self, body: dict[str, Any]) -> Generator[list[ServerSentEvent]]:
        """POST `body` and yield the events of each network read."""
        return event_batches(
            self._session,
            self._url,
            headers=self._headers,
            body=body,
            connect_timeout=self._connect_timeout,
            idle_timeout=self._idle_timeout,
        )
