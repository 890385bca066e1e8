"""Reading event streams from the SSE-speaking providers.

The POST itself and every transport error go through the one HTTP edge
(upstream/http.py); this module checks the answer is an event stream,
decodes it incrementally and closes the connection whatever happens. Reads
wait without a timer of their own: the relay's one watchdog per worker ends
a turn whose provider went silent (turns/supervise.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from collections.abc import Generator
from functools import partial
from typing import Any
from typing import ClassVar

import gevent
import orjson
import requests

from chatapp.errors import ProviderError
from chatapp.text import scrub_parsed
from chatapp.upstream.http import READING
from chatapp.upstream.http import bad_request
from chatapp.upstream.http import post
from chatapp.upstream.http import read_error_body
from chatapp.upstream.http import request_path
from chatapp.upstream.http import retry_after
from chatapp.upstream.http import status_error
from chatapp.upstream.http import upstream_pool
from chatapp.upstream.sse_decoder import ServerSentEvent
from chatapp.upstream.sse_decoder import SSEDecodeError
from chatapp.upstream.sse_decoder import SSEDecoder

READ_SIZE = 64 * 1024
# After the last event a body ends at once; never wait long for it.
DRAIN_SECONDS = 1.0
EVENT_STREAM = "text/event-stream"


def parse_json(data: str) -> dict[str, Any]:
    """Parse one event's JSON data, or fail the turn with provider_error.

    orjson parses a provider chunk in about a third of the standard
    library's time (2 us against 7 us, measured on the recorded OpenAI
    chunks), once per token. It refuses a lone surrogate escape, which the
    standard library reads (and the relay then replaces): such data takes
    the slow path instead of failing the turn.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ProviderError(
                "provider_error", "The provider sent malformed data."
            ) from exc
    if not isinstance(value, dict):
        raise ProviderError("provider_error", "The provider sent malformed data.")
    # harden #11: an escaped lone surrogate ("\\ud800") becomes U+FFFD here,
    # or no frame, poll answer or history entry holding it could be encoded.
    # (The dict itself, not a copy: once per token.)
    scrubbed: dict[str, Any] = scrub_parsed(data, value)
    return scrubbed


def check_stream(response: Any) -> None:
    """Raise the provider's refusal, unless it answered with an event stream."""
    if response.status != 200:
        if response.status == 400:
            raise bad_request(read_error_body(response))
        raise status_error(
            response.status, retry_after(response.headers.get("Retry-After"))
        )
    # harden #11: a 200 that is no event stream (a proxy's HTML page) is the
    # provider's error, not a connection that dropped.
    if not response.headers.get("Content-Type", "").lower().startswith(EVENT_STREAM):
        raise ProviderError(
            "provider_error", "The provider did not answer with an event stream."
        )


def body_reader(response: Any) -> Callable[[int], bytes]:
    """Return the cheapest read of each network read's worth of the body.

    A compressing proxy may gzip the stream even though we ask for identity:
    urllib3's read1 then decodes incrementally. An identity, chunked body
    (what a provider's event stream is) needs none of that: http.client's
    own read1, which urllib3's wraps, reads its chunks for about half the
    CPU, once per token. Its errors are transport errors like urllib3's
    (`translate_errors`), and the finally of `event_batches` releases or
    closes the connection as before.
    """
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    raw: Any = getattr(response, "_fp", None)
    if response.chunked and encoding in ("", "identity") and hasattr(raw, "read1"):
        read1: Callable[[int], bytes] = raw.read1
        return read1
    return partial(response.read1, decode_content=True)


def event_batches(
    pool: Any,
    path: str,
    *,
    headers: dict[str, str],
    body: dict[str, Any],
    connect_timeout: float,
) -> Generator[list[ServerSentEvent]]:
    """POST and yield the SSE events each network read completes.

    A read that completes no event (a keep-alive comment, half an event)
    yields an empty list: the provider is alive.
    """
    response: Any = None
    complete = False
    try:
        response = post(
            pool,
            path,
            headers=headers,
            body=body,
            connect_timeout=connect_timeout,
        )
        check_stream(response)
        decoder = SSEDecoder()
        read1 = body_reader(response)
        while True:
            with READING:
                data = read1(READ_SIZE)
            if not data:
                complete = True
                return
            try:
                events = decoder.feed(data)
            except SSEDecodeError as exc:
                raise ProviderError(
                    "provider_error", "The provider sent an oversized line."
                ) from exc
            yield events
    finally:
        if response is not None:
            if complete:
                # Read to its end: the connection goes back to the pool.
                response.release_conn()
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
    ) -> None:
        self._url = base_url + self.path
        self._pool = upstream_pool(session, self._url)
        self._path = request_path(self._url)  # parsed once, not per turn
        self._headers = {
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
            # The stream is read raw: a compressed body could not be decoded.
            "Accept-Encoding": "identity",
            **self.auth_headers(api_key),
        }
        self._connect_timeout = connect_timeout

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Return the headers that carry the key and the API version."""
        raise NotImplementedError

    def events(self, body: dict[str, Any]) -> Generator[list[ServerSentEvent]]:
        """POST `body` and yield the events of each network read."""
        return event_batches(
            self._pool,
            self._path,
            headers=self._headers,
            body=body,
            connect_timeout=self._connect_timeout,
        )
