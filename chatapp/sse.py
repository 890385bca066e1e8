"""Outbound SSE: every byte the event stream sends is made here, once.

A turn's events are encoded into frames by its producer when they happen;
the turn log keeps those bytes and readers only join and send them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from chatapp.text import scrub

# Any of these ends a line for an EventSource parser (CRLF is two of them).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

MEDIA_TYPE = "text/event-stream"

STREAM_HEADERS: dict[str, str] = {
    "Content-Type": f"{MEDIA_TYPE}; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Content-Encoding": "identity",
}

KEEP_ALIVE = b": keep-alive\n\n"

# One encoder for every event: json.dumps with options builds a new one per call.
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# JSON-quote a string: escapes quotes, backslashes and every control
# character, CR and LF included, so the result is always one line.
_quote: Any = json.encoder.encode_basestring


def _one_line(value: str) -> str:
    return _LINE_BREAK.sub("", value)


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        return scrub(text).encode()


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
    return _utf8("\n".join(lines) + "\n\n")


def frame(event_id: int, event: str, data: dict[str, Any]) -> bytes:
    """Encode a numbered event with JSON data: the bytes the log keeps."""
    return encode(event, _json(data), event_id)


def delta(event_id: int, text: str) -> bytes:
    """Encode a `delta` event: the hot path, one line of JSON data."""
    return b'id: %d\nevent: delta\ndata: {"text":%s}\n\n' % (
        event_id,
        _utf8(_quote(text)),
    )


def parse(frame_bytes: bytes) -> tuple[int, str, str]:
    """Read back the id, event and data of a frame this module made."""
    head, _, rest = frame_bytes.partition(b"\nevent: ")
    event, _, data = rest.partition(b"\ndata: ")
    return (
        int(head.removeprefix(b"id: ")),
        event.decode(),
        data.rstrip(b"\n").decode(),
    )


_START = b"id: 1\nevent: start\n"


def with_start_fields(chunk: bytes, fields: dict[str, Any]) -> bytes:
    """Add `fields` to the `start` event in `chunk`; the rest as it was."""
    at = chunk.find(_START)
    before, (head, sep, rest) = chunk[:at], chunk[at:].partition(b"\n\n")
    lines, _, data = head.partition(b"\ndata: ")
    if _joinable(data, fields):
        # The bytes frame() would make of the merged object, without parsing
        # the start event back and encoding it again.
        more = _utf8(_json(fields))
        return before + lines + b"\ndata: " + data[:-1] + b"," + more[1:] + sep + rest
    event_id, event, old = parse(head + sep)
    return before + frame(event_id, event, {**json.loads(old), **fields}) + rest


def _joinable(data: bytes, fields: dict[str, Any]) -> bool:
    """Whether `fields` can follow a frame's one-line JSON object as they are:
    a non-empty object, none of whose keys (nor text like them) is new."""
    return (
        len(data) > 2
        and data.startswith(b"{")
        and data.endswith(b"}")
        and b"\n" not in data
        and bool(fields)
        and not any(_quote(key).encode() in data for key in fields)
    )


def is_start(chunk: bytes) -> bool:
    """Tell whether `chunk` carries the turn's first event, `start`.

    A frame opens a chunk or follows an empty line (the `retry:` line's, or
    another frame's), so a data line can never pass for it.
    """
    return chunk.startswith(_START) or b"\n\n" + _START in chunk


def is_delta(frame_bytes: bytes) -> bool:
    """Tell whether a frame is a `delta` event."""
    return b"\nevent: delta\n" in frame_bytes


def is_done(frame_bytes: bytes) -> bool:
    """Tell whether a frame is the turn's `done` event."""
    return b"\nevent: done\n" in frame_bytes


def retry(milliseconds: int) -> bytes:
    """Tell EventSource how long to wait before reconnecting."""
    return f"retry: {int(milliseconds)}\n\n".encode("ascii")


def comment(text: str) -> bytes:
    """Encode a comment line, which EventSource ignores."""
    return f": {_one_line(text)}\n\n".encode()
