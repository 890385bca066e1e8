"""One owner for each open event stream: SSE or long poll, from open to release.

An `EventReader` takes the reader's place in this worker's registry
(`ReaderCaps`, which admission asks for capacity), gives way when evicted,
keeps the heartbeat, notices a client gone, marks its writes for the send
timeout, counts the stream in metrics, and releases all of it exactly once,
however the response ends (sse-starlette's `EventSourceResponse` is the
model of the shape).
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any

import gevent.monkey
from flask import Response
from flask import jsonify

from chatapp import sse
from chatapp.metrics import Metrics
from chatapp.store.tail import Tail
from chatapp.turns import read
from chatapp.turns.relay import Relay
from chatapp.web.readers import ReaderCaps
from chatapp.web.readers import socket_closer

_original_poll = gevent.monkey.get_original("select", "poll")
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
NO_STORE = {"Cache-Control": "no-store"}


class EventReader:
    """Own one reader of one turn: its slot, its liveness and its release."""

    def __init__(
        self,
        *,
        relay: Relay,
        metrics: Metrics,
        caps: ReaderCaps,
        turn_id: str,
        tail: Tail,
        after: int,
        client: str,
        environ: dict[str, Any],
    ) -> None:
        self._relay = relay
        self._metrics = metrics
        self._caps = caps
        self._turn_id = turn_id
        self._tail = tail
        self._after = after
        self._sock = environ.get("gunicorn.socket")
        self._streaming = False
        self._released = False
        # A few readers per turn and per client on each worker; past a cap
        # the oldest gives way (its socket is shut), never the new one. A poll
        # holds a greenlet for up to its wait as a stream does, so it counts.
        self._slot = caps.acquire(
            client,
            turn_id,
            socket_closer(self._sock),
            self._sock.fileno() if self._sock is not None else -1,
        )

    def poll(self, wait: float) -> Response:
        """Answer the events after `after` as JSON, waiting up to `wait`.

        A poll made to give way (past a reader cap) answers at once, maybe
        empty.
        """
        try:
            found, done = read.poll(
                self._tail, self._after, wait, gone=lambda: self._slot.evicted
            )
        finally:
            self.release(None)
        response = jsonify({"events": found, "done": done})
        response.headers.update(NO_STORE)
        return response

    def stream(
        self, *, heartbeat: float, orphan: float, start: dict[str, Any] | None = None
    ) -> Response:
        """Answer with the turn's events as SSE, live until `done`.

        `start` adds fields to the `start` event (a streamed POST's URLs).
        """
        self._streaming = True
        self._metrics.stream_opened(resumed=self._after > 0)
        # Wake often enough to notice a vanished client well within the
        # orphan time.
        wake = max(0.05, min(heartbeat, orphan / 3, 2.0))
        frames = read.stream(
            self._tail,
            self._after,
            heartbeat=heartbeat,
            wake=wake,
            client_gone=client_gone(self._sock),
        )
        tail = self._tail

        def closed() -> None:
            self.release(None if tail.done else ("storage" if tail.lost else "client"))

        # The server closes the body however the response ends, even
        # unstarted; a write that waits past the send timeout ends it.
        body = self._caps.sending(
            self._slot, frames, closed, _start_editor(start) if start else None
        )
        response = Response(body, headers=sse.STREAM_HEADERS)
        response.direct_passthrough = True  # bytes already: no re-encoding
        return response

    def release(self, cause: str | None) -> None:
        """Give back everything the reader holds; `cause` says why it ended early."""
        if self._released:
            return
        self._released = True
        self._relay.close(self._turn_id, self._tail)
        self._caps.release(self._slot)
        if self._streaming:
            self._metrics.stream_closed(cause)


def _start_editor(fields: dict[str, Any]) -> Callable[[bytes], bytes | None]:
    """Add `fields` to the `start` event of the chunk that carries it."""

    def edit(chunk: bytes) -> bytes | None:
        return sse.with_start_fields(chunk, fields) if sse.is_start(chunk) else None

    return edit


def finished_response() -> Response:
    """Answer a reader that already had `done`: 204 stops EventSource for good."""
    return Response(status=204, headers=NO_STORE)


def client_gone(sock: socket.socket | None) -> Callable[[], bool]:
    """Tell, without blocking, whether the client has closed its connection."""
    if sock is None:
        return lambda: False
    # The unpatched poll(2): gevent's select() first calls select(2), which
    # refuses descriptors >= 1024 (FD_SETSIZE) with ValueError.
    poller = _original_poll()
    poller.register(sock.fileno(), select.POLLIN | _POLLRDHUP)

    def gone() -> bool:
        try:
            ready = poller.poll(0)
        except OSError:
            return True
        for _, mask in ready:
            if mask & (_POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return True
        return False

    return gone
