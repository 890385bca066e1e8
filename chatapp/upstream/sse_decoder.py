"""Decode a ``text/event-stream`` body into events, exactly as WHATWG HTML says.

The rules are those of HTML section 9.2.6, "Interpreting an event stream":
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

Bytes go in through :meth:`SSEDecoder.feed` in whatever chunks the network
delivers; line splitting (with its CR/LF/CRLF and chunk-edge cases) is kept
apart from event assembly, as in florimondmanca/httpx-sse. No I/O happens here.
"""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple
from typing import NoReturn

from chatapp.errors import ChatappError

__all__ = ["SSEDecodeError", "SSEDecoder", "ServerSentEvent"]

DEFAULT_MAX_LINE_BYTES = 1024 * 1024

# NOTE: "a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF) character pair, a
# single U+000A LINE FEED (LF) character not preceded by a U+000D CARRIAGE
# RETURN (CR) character, and a single U+000D CARRIAGE RETURN (CR) character
# not followed by a U+000A LINE FEED (LF) character being the ways in which a
# line can end." str.splitlines() is not used: it also splits on VT, FF,
# U+0085, U+2028 and others, which are ordinary characters in an event stream.
_LINE_END = re.compile(r"\r\n?|\n")

_ASCII_DIGITS = frozenset("0123456789")


class SSEDecodeError(ChatappError, ValueError):
    """Report an event stream this decoder refuses to buffer."""


class ServerSentEvent(NamedTuple):
    """Hold one dispatched event (immutable; a tuple: made once per token)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turn chunks of an event stream into events, keeping state between them."""

    __slots__ = (
        "_after_cr",
        "_at_boundary",
        "_data",
        "_decoder",
        "_event_type",
        "_failed",
        "_last_event_id",
        "_last_event_id_string",
        "_max_line_bytes",
        "_pending",
        "_pending_bytes",
        "_quick_ok_chars",
        "_retry",
        "_started",
    )

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self._max_line_bytes = max_line_bytes
        # A line of at most this many characters cannot exceed the byte limit
        # (UTF-8 uses at most 4 bytes per code point), so it is never encoded
        # just to measure it.
        self._quick_ok_chars = max_line_bytes // 4
        self._reset()

    def _reset(self) -> None:
        # NOTE: "The stream must then be decoded using the UTF-8 decode
        # algorithm", which replaces invalid sequences with U+FFFD rather than
        # failing. The incremental decoder holds back a multibyte character
        # split across chunks until its last byte arrives.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False
        self._after_cr = False
        # The unterminated tail of the current line, as pieces, so that a long
        # line arriving in many chunks is joined once instead of re-copied on
        # every feed.
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._failed = False
        # NOTE: "a data buffer, an event type buffer, and a last event ID
        # buffer must be associated with it. They must be initialized to the
        # empty string." The data buffer is kept as its lines; it is empty
        # exactly when no data field was seen.
        self._data: list[str] = []
        self._event_type = ""
        self._last_event_id = ""
        # NOTE: the event source's "last event ID string" is set from the
        # buffer only when an event is dispatched; a field of a block that
        # never ends with a blank line does not reach it.
        self._last_event_id_string = ""
        self._retry: int | None = None
        # Nothing is held between events: no partial line, field or byte.
        self._at_boundary = False

    @property
    def last_event_id(self) -> str:
        """Return the last event ID string, for a Last-Event-ID header."""
        return self._last_event_id_string

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume bytes as they arrive; return the events completed by them."""
        if self._failed:
            raise SSEDecodeError("event stream already rejected; call close()")
        if self._at_boundary and chunk.endswith(b"\n\n"):
            events = self._data_events(chunk)
            if events is not None:
                return events
        events = self._feed(chunk)
        # A chunk that ends with LF leaves no byte in the UTF-8 decoder (LF
        # ends any sequence) and no CR pending.
        self._at_boundary = (
            chunk.endswith(b"\n")
            and not self._pending
            and not self._data
            and not self._event_type
            and self._retry is None
            and self._started
        )
        return events

    def _data_events(self, chunk: bytes) -> list[ServerSentEvent] | None:
        """Decode whole `data:`-only events at once; None for any other chunk.

        What providers send per token: blocks of one `data: ` line, each
        ending with a blank line. Lines end at ASCII LF, so the UTF-8 decode
        of each value alone is that of the whole chunk; anything else (a CR,
        another field, a long line) goes the general way.
        """
        if b"\r" in chunk:
            return None
        blocks = chunk[:-2].split(b"\n\n")
        quick = self._quick_ok_chars
        for block in blocks:
            if not block.startswith(b"data: ") or b"\n" in block or len(block) > quick:
                return None
        self._last_event_id_string = last_id = self._last_event_id
        return [
            ServerSentEvent("message", block[6:].decode("utf-8", "replace"), last_id)
            for block in blocks
        ]

    def _feed(self, chunk: bytes) -> list[ServerSentEvent]:
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            # NOTE: "One leading U+FEFF BYTE ORDER MARK character must be
            # ignored if any are present." Only one, and only at the start of
            # the stream; a BOM anywhere else is an ordinary character.
            if text[0] == "\ufeff":
                text = text[1:]
        if self._after_cr:
            self._after_cr = False
            # NOTE: a CR "not followed by" LF ends a line, so a CR at the end
            # of the previous chunk has already ended its line; an LF opening
            # this chunk is the second half of that CRLF, not a blank line.
            if text.startswith("\n"):
                text = text[1:]
        if not text:
            return []
        self._after_cr = text[-1] == "\r"

        # Without a CR the only line ending is LF: str.split, a third of
        # the regular expression's cost on a provider's usual chunk.
        lines = text.split("\n") if "\r" not in text else _LINE_END.split(text)
        tail = lines.pop()
        if lines and self._pending:
            self._pending.append(lines[0])
            lines[0] = "".join(self._pending)
            self._pending = []
            self._pending_bytes = 0
        self._check_line_lengths(lines)
        if tail:
            self._pending.append(tail)
            self._pending_bytes += len(tail.encode())
            if self._pending_bytes > self._max_line_bytes:
                self._fail()
        return self._interpret(lines) if lines else []

    def close(self) -> list[ServerSentEvent]:
        """End the stream: discard any unterminated event and reset all state."""
        # NOTE: "Once the end of the file is reached, any pending data must be
        # discarded. (If the file ends in the middle of an event, before the
        # final empty line, the incomplete event is not dispatched.)" That
        # includes an unterminated last line, so nothing is ever returned.
        self._reset()
        return []

    def _check_line_lengths(self, lines: list[str]) -> None:
        if not lines or max(map(len, lines)) <= self._quick_ok_chars:
            return
        for line in lines:
            if (
                len(line) > self._quick_ok_chars
                and len(line.encode()) > self._max_line_bytes
            ):
                self._fail()

    def _fail(self) -> NoReturn:
        # Drop the buffered line to free its memory, and refuse further input:
        # resuming mid-line would parse the rest of the line as a new field.
        self._failed = True
        self._pending = []
        self._pending_bytes = 0
        raise SSEDecodeError(
            f"event stream line longer than {self._max_line_bytes} bytes"
        )

    def _interpret(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                # NOTE: "If the line is empty (a blank line): Dispatch the
                # event."
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            elif line[0] == ":":
                # NOTE: "If the line starts with a U+003A COLON character (:):
                # Ignore the line."
                continue
            else:
                # NOTE: "Collect the characters on the line before the first
                # U+003A COLON character (:), and let field be that string" and
                # those after it as value; with no colon, "using the whole
                # line as the field name, and the empty string as the field
                # value", which is what partition() yields.
                name, _, value = line.partition(":")
                # NOTE: "If value starts with a U+0020 SPACE character, remove
                # it from value." One space only.
                if value.startswith(" "):
                    value = value[1:]
                self._process_field(name, value)
        return events

    def _process_field(self, name: str, value: str) -> None:
        if name == "data":
            # NOTE: "Append the field value to the data buffer, then append a
            # single U+000A LINE FEED (LF) character to the data buffer."
            # Kept as a list and joined at dispatch, which yields the same
            # string without repeated concatenation.
            self._data.append(value)
        elif name == "event":
            # NOTE: "Set the event type buffer to field value."
            self._event_type = value
        elif name == "id":
            # NOTE: "If the field value does not contain U+0000 NULL, then set
            # the last event ID buffer to the field value. Otherwise, ignore
            # the field." An empty value resets the buffer to "".
            if "\0" not in value:
                self._last_event_id = value
        elif name == "retry":
            # NOTE: "If the field value consists of only ASCII digits, then
            # interpret the field value as an integer in base ten ...
            # Otherwise, ignore the field." str.isdigit() is not used: it
            # accepts non-ASCII digits such as "²" or "٣".
            if value and _ASCII_DIGITS.issuperset(value):
                try:
                    self._retry = int(value)
                except ValueError:
                    # Python refuses to convert integers of thousands of
                    # digits; such a value cannot be a usable delay anyway.
                    pass
        # NOTE: "Otherwise: The field is ignored."

    def _dispatch(self) -> ServerSentEvent | None:
        # NOTE: "Set the last event ID string of the event source to the
        # value of the last event ID buffer." This comes first, so a block
        # with an id and no data still moves it.
        self._last_event_id_string = self._last_event_id
        data = self._data
        event_type = self._event_type
        retry = self._retry
        # The event type and retry given in a block belong to that block only,
        # whether or not it produces an event.
        self._data = []
        self._event_type = ""
        self._retry = None
        # NOTE: "If the data buffer is an empty string, set the data buffer and
        # the event type buffer to the empty string and return." The last
        # event ID buffer is not reset.
        if not data:
            return None
        # NOTE: "If the data buffer's last character is a U+000A LINE FEED
        # (LF) character, then remove the last character from the data
        # buffer." Joining the lines with LF is that buffer minus its final LF.
        # NOTE: "If the event type buffer has a value other than the empty
        # string, change the type of the newly created event to equal the
        # value of the event type buffer"; otherwise it stays "message".
        return ServerSentEvent(
            event=event_type or "message",
            data="\n".join(data),
            id=self._last_event_id,
            retry=retry,
        )
