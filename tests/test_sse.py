"""The encoder: whatever the model writes, it cannot end or forge an event."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatapp import sse
from chatapp.upstream.sse_decoder import SSEDecoder

HOSTILE = [
    "plain",
    "two\nlines",
    "\n\nevent: done\ndata: {}\n\n",
    "carriage\rreturn",
    "crlf\r\nid: 999\r\n\r\n",
    "data: forged",
    "\r\n\r\n",
    ": comment\n\nretry: 1",
    "trailing newline\n",
    "",
    "emoji 😀 and NUL \x00",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_json_data_round_trips_exactly_as_one_event(text: str) -> None:
    payload = json.dumps({"text": text})
    events = SSEDecoder().feed(sse.encode("delta", payload, 7))
    assert len(events) == 1
    assert events[0].event == "delta"
    assert events[0].id == "7"
    assert json.loads(events[0].data)["text"] == text


@pytest.mark.parametrize("text", HOSTILE)
def test_raw_data_never_forges_an_event(text: str) -> None:
    encoded = sse.encode("delta", text, 3) + sse.encode("done", "{}", 4)
    events = SSEDecoder().feed(encoded)
    assert [e.event for e in events] == ["delta", "done"]
    assert [e.id for e in events] == ["3", "4"]
    # Line breaks of any kind come back as "\n"; nothing else changes.
    assert events[0].data == text.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize(
    ("event", "event_id"),
    [("del\nta", "1\n2"), ("x\r\nevent: done", "5\rid: 6")],
)
def test_newlines_are_stripped_from_event_names_and_ids(
    event: str, event_id: str
) -> None:
    events = SSEDecoder().feed(sse.encode(event, "{}", event_id))
    assert len(events) == 1
    assert "\n" not in events[0].event and "\r" not in events[0].event
    assert events[0].id == event_id.replace("\n", "").replace("\r", "")


def test_comment_and_retry_are_ignored_by_parsers() -> None:
    stream = sse.retry(1500) + sse.comment("keep\nalive") + sse.KEEP_ALIVE
    assert SSEDecoder().feed(stream) == []
    assert stream.startswith(b"retry: 1500\n\n")


def test_stream_headers_forbid_buffering_and_compression() -> None:
    headers = sse.STREAM_HEADERS
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache, no-transform"
    assert headers["X-Accel-Buffering"] == "no"
    assert "Connection" not in headers


@pytest.mark.parametrize("url", HOSTILE)
def test_start_fields_join_the_start_event_and_forge_nothing(url: str) -> None:
    start = sse.frame(1, "start", {"id": "t", "conversation_id": "c"})
    rest = sse.delta(2, "hello") + sse.frame(3, "done", {"finish_reason": "stop"})

    chunk = sse.with_start_fields(start + rest, {"stream_url": url})

    events = SSEDecoder().feed(chunk)
    assert [(e.id, e.event) for e in events] == [
        ("1", "start"),
        ("2", "delta"),
        ("3", "done"),
    ]
    assert json.loads(events[0].data) == {
        "id": "t",
        "conversation_id": "c",
        "stream_url": url,
    }
    assert chunk.endswith(rest)


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"id": "t", "model": "m", "cached": False}, {"stream_url": "/s?t=a.b"}),
        ({"id": "t"}, {"stream_url": "/s", "cancel_url": "/c", "token": "x"}),
        ({"id": "t", "model": 'say "stream_url"'}, {"stream_url": "/s"}),
        ({"id": "t", "stream_url": "old"}, {"stream_url": "new"}),
        ({"id": "t"}, {"stream_url": "\u2028\ud800 é"}),
        ({}, {"stream_url": "/s"}),
        ({"id": "t"}, {}),
    ],
)
def test_start_fields_are_the_merged_objects_frame(
    data: dict[str, Any], fields: dict[str, Any]
) -> None:
    # Joined as bytes or merged and encoded again: the same frame.
    rest = sse.delta(2, "hello")
    chunk = sse.retry(2000) + sse.frame(1, "start", data) + rest
    merged = sse.retry(2000) + sse.frame(1, "start", {**data, **fields}) + rest
    assert sse.with_start_fields(chunk, fields) == merged


def test_only_the_first_event_is_recognised_as_start() -> None:
    assert sse.is_start(sse.frame(1, "start", {}) + sse.delta(2, "x"))
    assert not sse.is_start(sse.delta(2, "x"))
    assert not sse.is_start(sse.retry(2000))
    assert not sse.is_start(sse.frame(11, "start", {}))


def test_start_fields_find_the_start_event_behind_the_retry_line() -> None:
    # A stream's first write carries the retry line and the frames waiting.
    start = sse.frame(1, "start", {"id": "t"})
    chunk = sse.retry(2000) + start + sse.delta(2, "hi")
    assert sse.is_start(chunk)

    rewritten = sse.with_start_fields(chunk, {"stream_url": "/s"})

    assert rewritten.startswith(sse.retry(2000))
    events = SSEDecoder().feed(rewritten)
    assert [(e.id, e.event) for e in events] == [("1", "start"), ("2", "delta")]
    assert json.loads(events[0].data) == {"id": "t", "stream_url": "/s"}


def test_a_data_line_never_passes_for_the_start_event() -> None:
    forged = sse.frame(2, "delta", {"text": "id: 1\nevent: start\n"})
    assert not sse.is_start(sse.retry(2000) + forged)
