"""Pin the event-stream decoder to the WHATWG rules and to real provider bodies."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from collections.abc import Iterator

import pytest

from chatapp.upstream.sse_decoder import ServerSentEvent
from chatapp.upstream.sse_decoder import SSEDecodeError
from chatapp.upstream.sse_decoder import SSEDecoder
from tests.fake_provider import default_fixtures_dir

FIXTURES = default_fixtures_dir()


def ev(
    data: str, event: str = "message", id: str = "", retry: int | None = None
) -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data, id=id, retry=retry)


def decode(chunks: Iterable[bytes]) -> list[ServerSentEvent]:
    """Feed chunks to a fresh decoder, then end the stream."""
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def byte_by_byte(body: bytes) -> Iterator[bytes]:
    return (body[i : i + 1] for i in range(len(body)))


def random_splits(body: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(body) + 1), k=min(len(body), 6)))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:], strict=False)]


# --- The specification's own examples -------------------------------------

SPEC_EXAMPLES = [
    (
        "stock",
        b"data: YHOO\ndata: +2\ndata: 10\n\n",
        [ev("YHOO\n+2\n10")],
    ),
    (
        "first-second-third",
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n",
        # The third block has no blank line after it, so it is never fired.
        [ev("first event", id="1"), ev("second event", id="")],
    ),
    (
        "first-second-third-terminated",
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n\n",
        [
            ev("first event", id="1"),
            ev("second event", id=""),
            ev(" third event", id=""),
        ],
    ),
    (
        "blank-data-lines",
        b"data\n\ndata\ndata\n\ndata:",
        [ev(""), ev("\n")],
    ),
    (
        "colon-space-is-optional",
        b"data:test\n\ndata: test\n\n",
        [ev("test"), ev("test")],
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "expected"), SPEC_EXAMPLES, ids=[c[0] for c in SPEC_EXAMPLES]
)
def test_spec_examples(name: str, body: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode([body]) == expected


# --- Every awkward split ---------------------------------------------------

AWKWARD = [
    ("lf", b"data: a\ndata: b\n\n", [ev("a\nb")]),
    ("crlf", b"data: a\r\ndata: b\r\n\r\n", [ev("a\nb")]),
    (
        "cr-only",
        b"event: x\rdata: a\r\rdata: b\r\r",
        [ev("a", event="x"), ev("b")],
    ),
    ("mixed", b"data: a\r\ndata: b\rdata: c\n\r\n", [ev("a\nb\nc")]),
    ("crlf-then-lf", b"data: a\r\n\ndata: b\n\r\n", [ev("a"), ev("b")]),
    ("cr-then-crlf", b"data: a\r\r\ndata: b\r\r", [ev("a"), ev("b")]),
    ("lf-then-cr", b"data: a\n\rdata: b\n\r", [ev("a"), ev("b")]),
    ("bom", b"\xef\xbb\xbfdata: a\n\n", [ev("a")]),
    # Only one BOM is stripped; the second makes the field name "\ufeffdata".
    ("two-boms", b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n", [ev("b")]),
    ("bom-in-value", b"data: \xef\xbb\xbfa\n\n", [ev("\ufeffa")]),
    ("bom-after-start", b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [ev("a")]),
    ("emoji", "data: 😀\r\n\r\n".encode(), [ev("😀")]),
    ("cjk", "event: 話\ndata: 日本\n\n".encode(), [ev("日本", event="話")]),
    (
        "invalid-utf8",
        b"data: a\xffb\xe2\x82\ndata: \xf0\x9f\n\n",
        [ev("a\ufffdb\ufffd\n\ufffd")],
    ),
    (
        "fields-and-comments",
        b": hi\r\nid: 7\r\nevent: e\r\nretry: 15\r\ndata: x\r\n\r\n:\rdata\n\n",
        [ev("x", event="e", id="7", retry=15), ev("", id="7")],
    ),
]
AWKWARD_IDS = [c[0] for c in AWKWARD]


@pytest.mark.parametrize(("name", "body", "expected"), AWKWARD, ids=AWKWARD_IDS)
def test_one_feed(name: str, body: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode([body]) == expected


@pytest.mark.parametrize(("name", "body", "expected"), AWKWARD, ids=AWKWARD_IDS)
def test_byte_by_byte_matches_one_feed(
    name: str, body: bytes, expected: list[ServerSentEvent]
) -> None:
    assert decode(byte_by_byte(body)) == expected


@pytest.mark.parametrize(("name", "body", "expected"), AWKWARD, ids=AWKWARD_IDS)
def test_every_two_way_split_matches_one_feed(
    name: str, body: bytes, expected: list[ServerSentEvent]
) -> None:
    for cut in range(len(body) + 1):
        assert decode([body[:cut], body[cut:]]) == expected, cut


@pytest.mark.parametrize(("name", "body", "expected"), AWKWARD, ids=AWKWARD_IDS)
def test_random_splits_match_one_feed(
    name: str, body: bytes, expected: list[ServerSentEvent]
) -> None:
    for seed in range(50):
        chunks = random_splits(body, seed)
        assert b"".join(chunks) == body
        assert decode(chunks) == expected, chunks


def test_crlf_split_between_cr_and_lf_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # Were this LF a second line ending, the event would fire here.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [ev("a")]


def test_lone_cr_at_chunk_end_ends_the_line_without_waiting() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [ev("a")]
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\r") == [ev("b")]


def test_cr_skip_survives_an_empty_chunk() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [ev("a")]


def test_cr_skip_applies_only_to_the_next_character() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # The first byte of a two-byte character yields no text yet; the line
    # after the CR is then "\u00e9", an unknown field, and the LF ends it.
    assert decoder.feed(b"\xc3") == []
    assert decoder.feed(b"\xa9\n\n") == [ev("a")]


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_emoji_split_at_each_byte(cut: int) -> None:
    emoji = "😀".encode()
    assert len(emoji) == 4
    body = b"data: " + emoji + b"\n\n"
    head, rest = body[: 6 + cut], body[6 + cut :]
    decoder = SSEDecoder()
    assert decoder.feed(head) == []
    assert decoder.feed(rest) == [ev("😀")]


@pytest.mark.parametrize("cut", [1, 2])
def test_bom_split_across_chunks_is_stripped(cut: int) -> None:
    bom = b"\xef\xbb\xbf"
    decoder = SSEDecoder()
    assert decoder.feed(bom[:cut]) == []
    assert decoder.feed(bom[cut:] + b"data: a\n\n") == [ev("a")]


def test_events_are_returned_by_the_feed_that_completes_them() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [ev("a")]
    assert decoder.feed(b"\ndata: c\n\n") == [ev("b"), ev("c")]


# --- Field rules -------------------------------------------------------------

FIELD_CASES = [
    (
        "id-persists",
        b"id: 1\ndata: a\n\ndata: b\n\n",
        [ev("a", id="1"), ev("b", id="1")],
    ),
    ("id-in-block-without-data", b"id: 7\n\ndata: a\n\n", [ev("a", id="7")]),
    (
        "id-with-nul-ignored",
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [ev("a", id="1"), ev("b", id="1")],
    ),
    (
        "id-empty-resets",
        b"id: 1\ndata: a\n\nid:\ndata: b\n\n",
        [ev("a", id="1"), ev("b", id="")],
    ),
    (
        "id-no-colon-resets",
        b"id: 1\ndata: a\n\nid\ndata: b\n\n",
        [ev("a", id="1"), ev("b", id="")],
    ),
    ("id-keeps-inner-spaces", b"id:  x y \ndata: a\n\n", [ev("a", id=" x y ")]),
    ("id-last-wins", b"id: 1\nid: 2\ndata: a\n\n", [ev("a", id="2")]),
    ("retry-digits", b"retry: 10\ndata: a\n\n", [ev("a", retry=10)]),
    ("retry-zero", b"retry: 0\ndata: a\n\n", [ev("a", retry=0)]),
    ("retry-leading-zeros", b"retry: 007\ndata: a\n\n", [ev("a", retry=7)]),
    ("retry-trailing-letter", b"retry: 10a\ndata: a\n\n", [ev("a")]),
    ("retry-negative", b"retry: -1\ndata: a\n\n", [ev("a")]),
    ("retry-empty", b"retry:\ndata: a\n\n", [ev("a")]),
    ("retry-extra-space", b"retry:  10\ndata: a\n\n", [ev("a")]),
    ("retry-decimal", b"retry: 1.5\ndata: a\n\n", [ev("a")]),
    ("retry-non-ascii-digit", "retry: 1²\ndata: a\n\n".encode(), [ev("a")]),
    ("retry-arabic-digit", "retry: ٣\ndata: a\n\n".encode(), [ev("a")]),
    (
        "retry-invalid-keeps-valid",
        b"retry: 5\nretry: x\ndata: a\n\n",
        [ev("a", retry=5)],
    ),
    ("retry-huge-ignored", b"retry: " + b"9" * 5000 + b"\ndata: a\n\n", [ev("a")]),
    (
        "retry-only-for-its-event",
        b"retry: 10\ndata: a\n\ndata: b\n\n",
        [ev("a", retry=10), ev("b")],
    ),
    ("retry-in-block-without-data", b"retry: 10\n\ndata: a\n\n", [ev("a")]),
    ("event-type", b"event: x\ndata: a\n\ndata: b\n\n", [ev("a", event="x"), ev("b")]),
    ("event-in-block-without-data", b"event: x\n\ndata: a\n\n", [ev("a")]),
    ("event-empty-is-message", b"event:\ndata: a\n\n", [ev("a")]),
    ("event-last-wins", b"event: x\nevent: y\ndata: a\n\n", [ev("a", event="y")]),
    ("unknown-fields", b"foo: bar\nDATA: b\ndata: a\nData: c\n\n", [ev("a")]),
    ("leading-space-in-name", b" data: a\n\n", []),
    ("no-colon-data", b"data\n\n", [ev("")]),
    ("no-colon-event", b"event: x\nevent\ndata: a\n\n", [ev("a")]),
    ("one-space-removed", b"data:  a\n\n", [ev(" a")]),
    ("no-space", b"data:a\n\n", [ev("a")]),
    ("tab-kept", b"data:\ta\n\n", [ev("\ta")]),
    ("trailing-space-kept", b"data: a \n\n", [ev("a ")]),
    ("split-at-first-colon", b"data: a: b:c\n\n", [ev("a: b:c")]),
    ("colon-then-space-only", b"data: \n\n", [ev("")]),
    ("empty-data-lines", b"data:\ndata:\n\n", [ev("\n")]),
    ("comments-ignored", b":c\n: c\n:\ndata: a\n:\ndata: b\n\n", [ev("a\nb")]),
    ("comment-only-block", b": keepalive\n\n", []),
    ("blank-lines-only", b"\n\n\r\n\r", []),
    ("nul-in-data-kept", b"data: a\x00b\n\n", [ev("a\x00b")]),
    ("vertical-tab-is-not-a-line-end", b"data: a\x0bb\x0cc\n\n", [ev("a\x0bb\x0cc")]),
    (
        "unicode-line-sep-not-line-end",
        "data: a\u2028b\u0085c\n\n".encode(),
        [ev("a\u2028b\u0085c")],
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "expected"), FIELD_CASES, ids=[c[0] for c in FIELD_CASES]
)
def test_field_rules(name: str, body: bytes, expected: list[ServerSentEvent]) -> None:
    assert decode([body]) == expected
    assert decode(byte_by_byte(body)) == expected


def test_last_event_id_starts_empty_and_persists() -> None:
    decoder = SSEDecoder()
    assert decoder.last_event_id == ""
    decoder.feed(b"id: 42\n")
    # The field fills the buffer; the last event ID string follows it only
    # when the block is dispatched.
    assert decoder.last_event_id == ""
    assert decoder.feed(b"data: a\n\n") == [ev("a", id="42")]
    assert decoder.last_event_id == "42"
    decoder.feed(b"data: b\n\n")
    assert decoder.last_event_id == "42"
    decoder.feed(b"id: 4\x002\n\n")
    assert decoder.last_event_id == "42"


# The event source's last event ID string after the stream ends: what a
# reconnect sends as Last-Event-ID. Names follow the web-platform-tests files.
LAST_ID_CASES = [
    (
        "format-data-before-final-empty-line",
        b"id: 1\ndata: a\n\nid: 2\ndata: b",
        [ev("a", id="1")],
        "1",
    ),
    (
        "format-data-before-final-empty-line-lf-ended",
        b"id: 1\ndata: a\n\nid: 2\ndata: b\n",
        [ev("a", id="1")],
        "1",
    ),
    ("id-without-data-is-dispatched", b"id: 3\n\n", [], "3"),
    ("id-reset-by-empty-field", b"id: 3\ndata: a\n\nid\n\n", [ev("a", id="3")], ""),
    ("id-with-nul-ignored", b"id: 3\n\nid: 4\x005\n\n", [], "3"),
]


@pytest.mark.parametrize(
    ("name", "body", "expected", "last_id"),
    LAST_ID_CASES,
    ids=[c[0] for c in LAST_ID_CASES],
)
def test_last_event_id_is_what_was_last_dispatched(
    name: str, body: bytes, expected: list[ServerSentEvent], last_id: str
) -> None:
    for chunks in ([body], list(byte_by_byte(body))):
        decoder = SSEDecoder()
        events = [e for chunk in chunks for e in decoder.feed(chunk)]
        assert events == expected
        assert decoder.last_event_id == last_id


def test_event_defaults() -> None:
    assert ServerSentEvent() == ServerSentEvent(
        event="message", data="", id=None, retry=None
    )


def test_events_are_frozen() -> None:
    event = ev("a")
    with pytest.raises(AttributeError):
        event.data = "b"  # type: ignore[misc]


# --- End of stream -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "completed"),
    [
        (b"data: a", []),
        (b"data: a\n", []),
        (b"data: a\r", []),
        (b"data: a\r\n", []),
        (b"data: a\n\ndata: b", [ev("a")]),
        (b"data: a\n\ndata: b\n", [ev("a")]),
        (b"data: a\n\n\xf0\x9f", [ev("a")]),
    ],
)
def test_close_discards_the_unterminated_event(
    body: bytes, completed: list[ServerSentEvent]
) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(body) == completed
    assert decoder.close() == []


def test_close_resets_for_a_new_stream() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"\xef\xbb\xbfid: 9\nevent: x\nretry: 5\ndata: a\n")
    assert decoder.close() == []
    assert decoder.last_event_id == ""
    # A new stream: the old data is gone, and a leading BOM is stripped again.
    assert decoder.feed(b"\xef\xbb\xbf\ndata: b\n\n") == [ev("b")]


def test_close_forgets_a_pending_cr() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\r")
    decoder.close()
    # After the reset an LF is a line ending of its own again.
    assert decoder.feed(b"data: b\n\n") == [ev("b")]


# --- Real provider bodies ----------------------------------------------------

PROVIDER_FIXTURES = [
    ("openai-chat-stream.txt", 34),
    ("openai-chat-stream-include-usage.txt", 4),
    ("openai-chat-stream-tool-call.txt", 18),
    ("anthropic-messages-stream.txt", 9),
    ("anthropic-messages-stream-padded-tool-use.txt", 16),
    ("anthropic-error-stream.txt", 5),
]


@pytest.mark.parametrize(("filename", "count"), PROVIDER_FIXTURES)
def test_provider_fixture_decodes(filename: str, count: int) -> None:
    events = decode([(FIXTURES / filename).read_bytes()])
    assert len(events) == count
    assert all(e.id == "" and e.retry is None for e in events)
    if filename.startswith("openai"):
        assert all(e.event == "message" for e in events)
        assert events[-1].data == "[DONE]"
        payloads = [json.loads(e.data) for e in events[:-1]]
        assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    else:
        # Anthropic names every event after the type inside its JSON.
        assert all(json.loads(e.data)["type"] == e.event for e in events)


def test_anthropic_error_stream_ends_with_the_error_event() -> None:
    events = decode([(FIXTURES / "anthropic-error-stream.txt").read_bytes()])
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(("filename", "count"), PROVIDER_FIXTURES)
def test_provider_fixture_byte_by_byte_matches_one_feed(
    filename: str, count: int
) -> None:
    body = (FIXTURES / filename).read_bytes()
    whole = decode([body])
    assert len(whole) == count
    assert decode(byte_by_byte(body)) == whole
    for seed in range(5):
        assert decode(random_splits(body, seed)) == whole


@pytest.mark.parametrize(("filename", "count"), PROVIDER_FIXTURES)
@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_provider_fixture_with_other_line_endings(
    filename: str, count: int, newline: bytes
) -> None:
    body = (FIXTURES / filename).read_bytes()
    converted = body.replace(b"\n", newline)
    assert decode(byte_by_byte(converted)) == decode([body])


# --- Whole events per read (the decoder's quick path) ------------------------


def event_by_event(body: bytes) -> list[bytes]:
    """Split `body` after each blank line, as a provider's writes arrive."""
    pieces = body.split(b"\n\n")
    return [p + b"\n\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


PROVIDER_LIKE = [
    # After a first event, each read brings whole `data: ` events.
    ("plain", b"data: a\n\ndata: b\n\ndata: c\n\ndata: d\n\n"),
    ("two-per-read", b"data: a\n\ndata: b\n\ndata: c\n\n"),
    ("invalid-utf8", b"data: a\n\ndata: b\xff\xe2\x82\n\ndata: \xf0\x9f\n\n"),
    ("no-space", b"data: a\n\ndata:b\n\ndata:  c\n\n"),
    ("id-then-data", b"data: a\n\nid: 3\ndata: b\n\ndata: c\n\n"),
    ("multi-line", b"data: a\n\ndata: b\ndata: c\n\ndata: d\n\n"),
    ("other-field", b"data: a\n\nevent: e\ndata: b\n\ndata: c\n\n"),
    ("extra-blank", b"data: a\n\ndata: b\n\n\ndata: c\n\n"),
    ("half-then-rest", b"data: a\n\ndata: b\ndata: c\n\n"),
    ("cr", b"data: a\n\ndata: b\r\n\r\ndata: c\n\n"),
    ("bom-later", b"data: a\n\n\xef\xbb\xbfdata: b\n\ndata: c\n\n"),
]


@pytest.mark.parametrize(
    ("name", "body"), PROVIDER_LIKE, ids=[c[0] for c in PROVIDER_LIKE]
)
def test_whole_events_per_read_match_one_feed(name: str, body: bytes) -> None:
    whole = decode([body])
    assert decode(event_by_event(body)) == whole
    # Two events a read, and a read that ends mid-event before whole ones.
    pieces = event_by_event(body)
    pairs = [b"".join(pieces[i : i + 2]) for i in range(0, len(pieces), 2)]
    assert decode(pairs) == whole
    assert decode([body[:3], body[3:]]) == whole


@pytest.mark.parametrize(("filename", "count"), PROVIDER_FIXTURES)
def test_provider_fixture_event_by_event_matches_one_feed(
    filename: str, count: int
) -> None:
    body = (FIXTURES / filename).read_bytes()
    assert decode(event_by_event(body)) == decode([body])


def test_quick_path_keeps_the_last_event_id() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 7\ndata: a\n\n") == [ev("a", id="7")]
    assert decoder.feed(b"data: b\n\n") == [ev("b", id="7")]
    assert decoder.last_event_id == "7"


def test_quick_path_line_over_the_limit_raises() -> None:
    decoder = SSEDecoder(max_line_bytes=10)
    assert decoder.feed(b"data: a\n\n") == [ev("a")]
    with pytest.raises(SSEDecodeError, match="longer than 10 bytes"):
        decoder.feed(b"data: 12345\n\n")


# --- Bounded memory ----------------------------------------------------------


def test_line_at_the_limit_is_accepted() -> None:
    decoder = SSEDecoder(max_line_bytes=10)
    assert decoder.feed(b"data: 1234\n\n") == [ev("1234")]


def test_line_over_the_limit_in_one_chunk_raises() -> None:
    decoder = SSEDecoder(max_line_bytes=10)
    with pytest.raises(SSEDecodeError, match="longer than 10 bytes"):
        decoder.feed(b"data: a\n\ndata: 12345\n\n")


def test_unterminated_line_over_the_limit_raises_before_its_end() -> None:
    decoder = SSEDecoder(max_line_bytes=10)
    for byte in byte_by_byte(b"data: 1234"):
        assert decoder.feed(byte) == []
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"5")


def test_limit_counts_utf8_bytes_not_characters() -> None:
    decoder = SSEDecoder(max_line_bytes=10)
    assert decoder.feed("data: éé\n\n".encode()) == [ev("éé")]
    with pytest.raises(SSEDecodeError):
        decoder.feed("data: ééé\n".encode())


def test_default_limit_is_one_mebibyte() -> None:
    line = b"data: " + b"x" * (1024 * 1024 - 6)
    assert SSEDecoder().feed(line + b"\n\n") == [ev("x" * (1024 * 1024 - 6))]
    with pytest.raises(SSEDecodeError):
        SSEDecoder().feed(line + b"x")


def test_decoder_refuses_input_after_the_limit_until_closed() -> None:
    decoder = SSEDecoder(max_line_bytes=10)
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"data: 12345678")
    # The rest of the overlong line must not be parsed as a fresh field.
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"\ndata: b\n\n")
    assert decoder.close() == []
    assert decoder.feed(b"data: b\n\n") == [ev("b")]


def test_limit_error_is_a_value_error() -> None:
    assert issubclass(SSEDecodeError, ValueError)


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        SSEDecoder(max_line_bytes=limit)
