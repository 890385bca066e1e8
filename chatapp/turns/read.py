"""Readers: a turn's frames from the log to one client, live until `done`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from collections.abc import Generator
from typing import Any

from chatapp import sse
from chatapp.store.tail import Sleeper
from chatapp.store.tail import Tail

RETRY_MS = 2000

_LOST_ERROR = json.dumps(
    {
        "code": "internal",
        "message": "Lost the connection to shared storage.",
        "retryable": True,
    }
)
_ERROR_DONE = json.dumps({"finish_reason": "error"})
_LOST = sse.encode("error", _LOST_ERROR) + sse.encode("done", _ERROR_DONE)


# The end of a turn that was accepted but whose log is gone: a Redis failover
# can lose a new turn's first writes (replication is asynchronous). Its reader
# still gets SPEC's `error` + `done`. No ids: there is nothing to resume.
LOST_TURN_STREAM = sse.retry(RETRY_MS) + _LOST
LOST_TURN_EVENTS = (
    {"id": None, "event": "error", "data": _LOST_ERROR},
    {"id": None, "event": "done", "data": _ERROR_DONE},
)


def finished(tail: Tail, after: int) -> bool:
    """Tell whether a reader at `after` has already had the turn's `done`."""
    return tail.done and after >= len(tail.frames)


def stream(
    tail: Tail,
    after: int,
    *,
    heartbeat: float,
    wake: float,
    client_gone: Callable[[], bool],
) -> Generator[bytes]:
    """Yield the turn's SSE bytes after event `after`, live until `done`.

    Each chunk is one write to the client, so a chunk carries every frame
    waiting when it is made; the first one also carries the `retry:` line.
    """
    frames = tail.frames
    end = len(frames)
    if end > after:
        # Frames already there (`start`, at least, for a new turn) go out
        # with the retry line: one write where there were two.
        yield sse.retry(RETRY_MS) + b"".join(frames[after:end])
        after = end
    else:
        yield sse.retry(RETRY_MS)
    last_write = time.monotonic()
    sleeper = Sleeper(wake)
    try:
        while True:
            frames = tail.frames
            end = len(frames)
            if end > after:
                chunk = (
                    frames[after] if end == after + 1 else b"".join(frames[after:end])
                )
                after = end
                yield chunk
                last_write = time.monotonic()
                continue
            if tail.done:
                if after > end:
                    # The reader saw more than the log kept (its producer died
                    # before writing all it had sent): still end with the end.
                    yield b"".join(f for f in frames[-2:] if not sse.is_delta(f))
                return
            if tail.lost:
                # No ids: made-up ones could hide real events on a resume.
                yield _LOST
                return
            sleeper.wait(tail)
            if len(tail.frames) > after or tail.done or tail.lost:
                continue
            if client_gone():
                return
            now = time.monotonic()
            if now - last_write >= heartbeat:
                yield sse.KEEP_ALIVE
                last_write = now
    finally:
        sleeper.close()


def poll(
    tail: Tail,
    after: int,
    wait: float,
    *,
    wake: float = 1.0,
    gone: Callable[[], bool] = lambda: False,
) -> tuple[list[dict[str, Any]], bool]:
    """Return events after `after`, waiting up to `wait` when none are ready.

    The wait ends early, empty, when `gone()` says the reader must give way.
    """
    deadline = time.monotonic() + wait
    while len(tail.frames) <= after and not tail.done and not tail.lost:
        left = deadline - time.monotonic()
        if left <= 0 or gone():
            break
        tail.wait(min(wake, left))
    events = []
    for frame in tail.frames[after:]:
        event_id, event, data = sse.parse(frame)
        events.append({"id": event_id, "event": event, "data": data})
    return events, tail.done or tail.lost
