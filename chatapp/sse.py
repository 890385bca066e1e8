"""Outbound SSE: every byte the event stream sends goes through here."""

from __future__ import annotations

import re

# Any of these ends a line for an EventSource parser (CRLF is two of them).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

STREAM_HEADERS: dict[str, str] = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Content-Encoding": "identity",
}

KEEP_ALIVE = b": keep-alive\n\n"


def _one_line(value: str) -> str:
    return _LINE_BREAK.sub("", value)


def encode(event: str, data: str, event_id: int | str | None = None) -> bytes:
    """Encode one event so that no data can end it early or forge another."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {_one_line(str(event_id))}")
    lines.append(f"event: {_one_line(event)}")
    # Each line of data becomes its own `data:` field; the parser joins them
    # back with "\n". A CR or CRLF comes back as "\n" -- JSON data (all we
    # send) escapes line breaks, so nothing is lost there.
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def retry(milliseconds: int) -> bytes:
    """Tell EventSource how long to wait before reconnecting."""
    return f"retry: {int(milliseconds)}\n\n".encode("ascii")


def comment(text: str) -> bytes:
    """Encode a comment line, which EventSource ignores."""
    return f": {_one_line(text)}\n\n".encode()
