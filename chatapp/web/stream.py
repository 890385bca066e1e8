"""The SSE response: a turn's frames to one client, counted while open."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any

import gevent.monkey
from flask import Response
from werkzeug.wsgi import ClosingIterator

from chatapp import sse
from chatapp.store.tail import Tail
from chatapp.turns import read
from chatapp.web.readers import ReaderCaps
from chatapp.web.readers import ReaderSlot

_original_poll = gevent.monkey.get_original("select", "poll")
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)


def event_stream(
    tail: Tail,
    after: int,
    *,
    environ: dict[str, Any],
    heartbeat: float,
    orphan: float,
    on_close: Callable[[str | None], None],
    caps: ReaderCaps,
    slot: ReaderSlot,
) -> Response:
    """Answer with the turn's events after `after`, live until `done`."""
    gone = client_gone(environ.get("gunicorn.socket"))
    # Wake often enough to notice a vanished client well within the orphan time.
    wake = max(0.05, min(heartbeat, orphan / 3, 2.0))
    frames = read.stream(tail, after, heartbeat=heartbeat, wake=wake, client_gone=gone)

    def closed() -> None:
        on_close(None if tail.done else ("storage" if tail.lost else "client"))

    # The server closes the body however the response ends, even unstarted;
    # a write that waits past the send timeout ends it (readers.py).
    body = ClosingIterator(caps.sending(slot, frames), [frames.close, closed])
    response = Response(body, headers=sse.STREAM_HEADERS)
    response.direct_passthrough = True  # bytes already: no re-encoding
    return response


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
