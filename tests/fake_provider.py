"""Fake OpenAI and Anthropic upstreams: a real HTTP/1.1 server on 127.0.0.1.

The service under test calls this server exactly as it calls the real APIs.
By default each endpoint replays its recorded fixture byte for byte; a test
picks another behaviour either by queueing a ``Behaviour`` or by starting the
last user message with a directive::

    fake: crlf chunk=1 delay_ms=2 | Hello **world**

Options come before `` | ``, the answer text to synthesize after it.

OpenAI's reasoning models (``o1``…``o9``, ``gpt-5``…) are refused as OpenAI
refuses them: a body with ``max_tokens`` or ``temperature`` gets the recorded
400 naming that parameter. ``FakeProvider.fail_next`` makes the next K
requests fail with a status (and an optional ``Retry-After``).

``POST /v1/moderations`` answers OpenAI's moderation verdict: not flagged,
unless the input holds one of the moderation directives anywhere in it
(``mod:flag``, ``mod:fail`` = 500, ``mod:malformed``, ``mod:stall`` = no
answer until the client leaves, ``mod:delay_ms=N``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import select
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from typing import Literal
from urllib.parse import urlsplit

Provider = Literal["openai", "anthropic"]
LineEnding = Literal["lf", "crlf", "cr"]
Ending = Literal["end", "drop", "stall"]

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
MODERATION_PATH = "/v1/moderations"
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
DIRECTIVE_PREFIX = "fake:"
TEXT_SEPARATOR = " | "
KEEPALIVE_COMMENT = b": keep-alive comment\n\n"

MAIN_FIXTURE: dict[Provider, str] = {
    "openai": "openai-chat-stream.txt",
    "anthropic": "anthropic-messages-stream.txt",
}
ERROR_FIXTURE: dict[tuple[Provider, int], str] = {
    ("openai", 429): "openai-error-429.json",
    ("anthropic", 529): "anthropic-error-529.json",
}
ANTHROPIC_ERROR_STREAM = "anthropic-error-stream.txt"
OPENAI_REASONING_STREAM = "openai-compat-reasoning-content-stream.txt"
ANTHROPIC_THINKING_STREAM = "anthropic-thinking-stream.txt"
# OpenAI's exact 400s for a reasoning model sent max_tokens or temperature.
REFUSED_PARAMETER_FIXTURE = {
    "max_tokens": "openai-error-400-max-tokens.json",
    "temperature": "openai-error-400-temperature.json",
}
REASONING_MODEL = re.compile(r"^(?:o[1-9]|gpt-5)(?:$|[-._:])")
STREAM_CONTENT_TYPE: dict[Provider, str] = {
    "openai": "text/event-stream; charset=utf-8",
    "anthropic": "text/event-stream",
}
JSON_CONTENT_TYPE: dict[Provider, str] = {
    "openai": "application/json; charset=utf-8",
    "anthropic": "application/json",
}
OPENAI_MIDSTREAM_ERROR = (
    b'data: {"error":{"message":"The server had an error while processing your'
    b' request.","type":"server_error","param":null,"code":null}}\n\n'
)
# How many content events precede an injected mid-stream error / broken event.
MIDSTREAM_ERROR_AFTER: dict[Provider, int] = {"openai": 2, "anthropic": 1}
TO_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens"}
TO_OPENAI_FINISH = {"end_turn": "stop", "max_tokens": "length"}
OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Forbidden.",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error processing your request."),
    503: ("server_error", None, "The engine is currently overloaded."),
}
ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed size."),
    429: ("rate_limit_error", "This request would exceed your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def default_fixtures_dir() -> Path:
    """Return the provider fixtures directory, honouring CHATAPP_FIXTURES_DIR."""
    override = os.environ.get("CHATAPP_FIXTURES_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "fixtures" / "providers"


@dataclass(frozen=True)
class Behaviour:
    """How the fake answers one request; the defaults replay the main fixture."""

    text: str | None = None
    fixture: str | None = None
    line_ending: LineEnding = "lf"
    chunk: int | None = None
    delay_ms: int = 0
    ttft_ms: int = 0
    comments: bool = False
    status: int = 200
    midstream_error: bool = False
    malformed: bool = False
    drop_after: int | None = None
    stall_after: int | None = None
    finish: str = "stop"
    pieces: int = 3
    # Answer with a 307 to this URL instead of the stream.
    location: str | None = None
    # Faults of the wire: a TCP reset before any byte, a chunk that promises
    # more than it holds, a gzip-compressed stream, and a 200 that is an HTML
    # page instead of an event stream.
    reset: bool = False
    truncate: bool = False
    gzip: bool = False
    html: bool = False
    # Sent with an error status as the Retry-After header (seconds).
    retry_after: int | None = None
    # An in-stream error before any text (HTTP 200): Anthropic's recorded
    # overloaded_error, OpenAI's server_error chunk.
    overloaded: bool = False
    # Refuse this request field with OpenAI's recorded 400, whatever the model.
    refuse: str | None = None

    def __post_init__(self) -> None:
        if self.line_ending not in ("lf", "crlf", "cr"):
            raise ValueError(
                f"line_ending must be lf, crlf or cr: {self.line_ending!r}"
            )
        if self.chunk is not None and self.chunk < 1:
            raise ValueError("chunk must be at least 1")
        if self.pieces < 1:
            raise ValueError("pieces must be at least 1")
        if self.delay_ms < 0 or self.ttft_ms < 0:
            raise ValueError("delays cannot be negative")
        if not 100 <= self.status <= 599:
            raise ValueError(f"status is not an HTTP status: {self.status}")
        for name in ("drop_after", "stall_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} cannot be negative")
        if self.drop_after is not None and self.stall_after is not None:
            raise ValueError("choose drop_after or stall_after, not both")
        if self.midstream_error and self.malformed:
            raise ValueError("choose midstream_error or malformed, not both")
        if self.refuse is not None and self.refuse not in REFUSED_PARAMETER_FIXTURE:
            raise ValueError(
                f"refuse must name one of {list(REFUSED_PARAMETER_FIXTURE)}"
            )
        if self.fixture is not None and Path(self.fixture).name != self.fixture:
            raise ValueError(f"fixture must be a bare file name: {self.fixture!r}")

    def as_directive(self) -> str:
        """Return the ``fake:`` message text that parses back to this behaviour."""
        options: list[str] = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "text" or value == field.default:
                continue
            if field.name == "line_ending":
                options.append(value)
            elif value is True:
                options.append(field.name)
            else:
                options.append(f"{field.name}={value}")
        directive = " ".join([DIRECTIVE_PREFIX, *options])
        if self.text is not None:
            directive += TEXT_SEPARATOR + self.text
        return directive


_FLAG_OPTIONS = {
    "crlf": ("line_ending", "crlf"),
    "cr": ("line_ending", "cr"),
    "lf": ("line_ending", "lf"),
    "comments": ("comments", True),
    "midstream_error": ("midstream_error", True),
    "malformed": ("malformed", True),
    "reset": ("reset", True),
    "truncate": ("truncate", True),
    "gzip": ("gzip", True),
    "html": ("html", True),
    "overloaded": ("overloaded", True),
}
_INT_OPTIONS = frozenset(
    (
        "chunk",
        "delay_ms",
        "ttft_ms",
        "status",
        "drop_after",
        "stall_after",
        "pieces",
        "retry_after",
    )
)
_STR_OPTIONS = frozenset(("fixture", "finish", "location", "refuse"))


def parse_directive(content: str) -> Behaviour | None:
    """Parse a ``fake:`` directive; None when the text is not one.

    Raises ValueError for an unknown or malformed option, so a typo in a test
    shows up as an HTTP 400 from the fake instead of a silent default.
    """
    if not content.startswith(DIRECTIVE_PREFIX):
        return None
    # A leading space lets "fake:| text" split like "fake: | text".
    options, separator, text = (" " + content[len(DIRECTIVE_PREFIX) :]).partition(
        TEXT_SEPARATOR
    )
    if not separator and options.rstrip().endswith(" |"):
        # "fake: chunk=1 |" whose trailing space an editor trimmed: empty answer.
        options, separator = options.rstrip()[:-2], TEXT_SEPARATOR
    fields: dict[str, Any] = {}
    if separator:
        fields["text"] = text
    for token in options.split():
        name, equals, value = token.partition("=")
        if name in _FLAG_OPTIONS and not equals:
            field_name, field_value = _FLAG_OPTIONS[name]
            fields[field_name] = field_value
        elif name in _INT_OPTIONS and equals:
            try:
                fields[name] = int(value)
            except ValueError:
                raise ValueError(f"fake: {name} needs an integer: {token!r}") from None
        elif name in _STR_OPTIONS and equals and value:
            fields[name] = value
        else:
            raise ValueError(f"fake: unknown option {token!r}")
    return Behaviour(**fields)


def last_user_text(body: dict[str, Any] | None) -> str | None:
    """Return the text of the last user message of an OpenAI/Anthropic request."""
    messages = body.get("messages") if body is not None else None
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                part.get("text", "")
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        return None
    return None


def moderation_verdict(text: str, flagged: bool) -> dict[str, Any]:
    """Build OpenAI's moderation answer for one input."""
    score = 0.97 if flagged else 0.0001
    return {
        "id": "modr-" + uuid.uuid4().hex[:24],
        "model": "omni-moderation-latest",
        "results": [
            {
                "flagged": flagged,
                "categories": {
                    c: flagged and c == "violence" for c in MODERATION_CATEGORIES
                },
                "category_scores": {
                    c: score if c == "violence" else 0.0001
                    for c in MODERATION_CATEGORIES
                },
                "category_applied_input_types": {
                    c: ["text"] for c in MODERATION_CATEGORIES
                },
            }
        ],
    }


def moderation_delay_ms(text: str) -> int:
    """Read ``mod:delay_ms=N`` from a moderation input (0 when absent)."""
    for word in text.split():
        if word.startswith("mod:delay_ms="):
            return int(word.removeprefix("mod:delay_ms="))
    return 0


def _json(value: Any) -> bytes:
    """Encode compactly like the providers; fall back to ASCII for lone surrogates."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def split_text(text: str, size: int) -> list[str]:
    """Cut text into pieces of ``size`` characters."""
    return [text[start : start + size] for start in range(0, len(text), size)]


def openai_events(
    pieces: list[str],
    *,
    finish: str = "stop",
    model: str = "gpt-4o-2024-08-06",
    ident: str | None = None,
    created: int | None = None,
    fingerprint: str = "fp_fakeprovider",
    prompt_tokens: int = 10,
    completion_tokens: int | None = None,
) -> list[bytes]:
    """Frame pieces as an OpenAI chat.completion.chunk stream ending in [DONE]."""
    ident = ident or "chatcmpl-" + uuid.uuid4().hex[:29]
    created = int(time.time()) if created is None else created
    completion_tokens = len(pieces) if completion_tokens is None else completion_tokens

    def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> bytes:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + _json(chunk) + b"\n\n"

    def choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }

    role = {"role": "assistant", "content": "", "refusal": None}
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    return [
        event([choice(role, None)], None),
        *(event([choice({"content": piece}, None)], None) for piece in pieces),
        event([choice({}, TO_OPENAI_FINISH.get(finish, finish))], None),
        event([], usage),
        b"data: [DONE]\n\n",
    ]


def anthropic_events(
    pieces: list[str],
    *,
    finish: str = "stop",
    model: str = "claude-3-opus-latest",
    ident: str | None = None,
    input_tokens: int = 10,
    output_tokens: int | None = None,
) -> list[bytes]:
    """Frame pieces as an Anthropic Messages stream ending in message_stop."""
    ident = ident or "msg_" + uuid.uuid4().hex
    output_tokens = len(pieces) if output_tokens is None else output_tokens

    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _json(data) + b"\n\n"

    message: dict[str, Any] = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    text_block = {"type": "text", "text": ""}
    stop = {
        "stop_reason": TO_ANTHROPIC_STOP.get(finish, finish),
        "stop_sequence": None,
    }
    return [
        event("message_start", {"type": "message_start", "message": message}),
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": text_block},
        ),
        # The real API spaces this one object differently from all the others.
        b'event: ping\ndata: {"type": "ping"}\n\n',
        *(
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            for piece in pieces
        ),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": stop,
                "usage": {"output_tokens": output_tokens},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]


def split_events(body: bytes) -> list[bytes]:
    """Split an LF-framed SSE body into events, each keeping its blank line."""
    events = [part + b"\n\n" for part in body.split(b"\n\n")]
    events[-1] = events[-1][:-2]
    return [event for event in events if event]


def _data_line(event: bytes) -> bytes | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].lstrip(b" ")
    return None


def _is_content_event(provider: Provider, event: bytes) -> bool:
    if provider == "anthropic":
        return event.startswith(b"event: content_block_delta\n")
    data = _data_line(event)
    try:
        chunk = json.loads(data) if data is not None else None
    except ValueError:
        return False
    if not isinstance(chunk, dict) or not chunk.get("choices"):
        return False
    delta = chunk["choices"][0].get("delta") or {}
    return bool(delta.get("content"))


def _cut_after_content(provider: Provider, events: list[bytes], count: int) -> int:
    """Index just past the ``count``-th content event (or past the last one)."""
    seen = 0
    end = 0
    for index, event in enumerate(events):
        if _is_content_event(provider, event):
            seen += 1
            end = index + 1
            if seen == count:
                break
    return end


def _broken(event: bytes) -> bytes:
    """Return the event with its data JSON cut in half."""
    head, _, rest = event.partition(b"data: ")
    payload = rest.rstrip(b"\n")
    return head + b"data: " + payload[: max(1, len(payload) // 2)] + b"\n\n"


@dataclass(frozen=True)
class Plan:
    """The bytes to write for one streamed answer and how the body ends."""

    writes: list[bytes]
    ending: Ending


def plan_stream(
    provider: Provider,
    behaviour: Behaviour,
    request_body: dict[str, Any] | None,
    fixtures_dir: Path,
) -> Plan:
    """Turn a behaviour into the writes of one response body."""
    events = _events(provider, behaviour, request_body, fixtures_dir)
    ending: Ending = "end"
    if behaviour.drop_after is not None:
        events, ending = events[: behaviour.drop_after], "drop"
    elif behaviour.stall_after is not None:
        events, ending = events[: behaviour.stall_after], "stall"
    segments: list[bytes] = []
    for event in events:
        if behaviour.comments and segments:
            segments.append(KEEPALIVE_COMMENT)
        segments.append(event)
    if behaviour.line_ending != "lf":
        newline = b"\r\n" if behaviour.line_ending == "crlf" else b"\r"
        segments = [segment.replace(b"\n", newline) for segment in segments]
    if behaviour.chunk is not None:
        body = b"".join(segments)
        segments = [
            body[start : start + behaviour.chunk]
            for start in range(0, len(body), behaviour.chunk)
        ]
    return Plan(writes=segments, ending=ending)


def _events(
    provider: Provider,
    behaviour: Behaviour,
    request_body: dict[str, Any] | None,
    fixtures_dir: Path,
) -> list[bytes]:
    if (
        provider == "anthropic"
        and behaviour.midstream_error
        and behaviour.text is None
        and behaviour.fixture is None
    ):
        return split_events(_read_fixture(fixtures_dir, ANTHROPIC_ERROR_STREAM))
    if provider == "anthropic" and behaviour.overloaded:
        # The recorded error event, after the recorded opening and before
        # any text: what the API sends when it is overloaded mid-request.
        recorded = split_events(_read_fixture(fixtures_dir, ANTHROPIC_ERROR_STREAM))
        end = _cut_after_content(provider, recorded, 1) - 1
        return [*recorded[:end], recorded[-1]]
    if provider == "openai" and behaviour.overloaded:
        # The opening chunk (the role, no text), then the error chunk.
        opening = split_events(_read_fixture(fixtures_dir, MAIN_FIXTURE[provider]))
        return [
            *opening[: _cut_after_content(provider, opening, 1) - 1],
            OPENAI_MIDSTREAM_ERROR,
        ]
    if behaviour.fixture is not None or behaviour.text is None:
        name = behaviour.fixture or MAIN_FIXTURE[provider]
        events = split_events(_read_fixture(fixtures_dir, name))
    else:
        events = _synthesize(provider, behaviour, request_body)
    if behaviour.midstream_error:
        end = _cut_after_content(provider, events, MIDSTREAM_ERROR_AFTER[provider])
        if provider == "openai":
            error = OPENAI_MIDSTREAM_ERROR
        else:
            stream = _read_fixture(fixtures_dir, ANTHROPIC_ERROR_STREAM)
            error = split_events(stream)[-1]
        return [*events[:end], error]
    if behaviour.malformed:
        end = _cut_after_content(provider, events, 1)
        rest = [e for e in events[end:] if _is_content_event(provider, e)]
        victim = rest[0] if rest else events[max(end - 1, 0)]
        return [*events[:end], _broken(victim)]
    return events


def _synthesize(
    provider: Provider, behaviour: Behaviour, request_body: dict[str, Any] | None
) -> list[bytes]:
    text = behaviour.text or ""
    pieces = split_text(text, behaviour.pieces)
    model = request_body.get("model") if request_body is not None else None
    prompt_tokens = max(1, len(json.dumps(request_body or {}).split()) // 2)
    if provider == "openai":
        return openai_events(
            pieces,
            finish=behaviour.finish,
            model=model if isinstance(model, str) else "gpt-4o-2024-08-06",
            prompt_tokens=prompt_tokens,
        )
    return anthropic_events(
        pieces,
        finish=behaviour.finish,
        model=model if isinstance(model, str) else "claude-3-opus-latest",
        input_tokens=prompt_tokens,
    )


def _read_fixture(fixtures_dir: Path, name: str) -> bytes:
    return (fixtures_dir / name).read_bytes()


def error_body(provider: Provider, status: int, fixtures_dir: Path) -> bytes:
    """Return the provider's JSON error body for an HTTP status."""
    fixture = ERROR_FIXTURE.get((provider, status))
    if fixture is not None:
        return _read_fixture(fixtures_dir, fixture)
    return error_json(provider, status)


def error_json(provider: Provider, status: int, message: str | None = None) -> bytes:
    """Build an error body in the provider's documented shape."""
    if provider == "openai":
        kind, code, default = OPENAI_ERRORS.get(
            status, ("server_error", None, f"HTTP {status}.")
        )
        error = {
            "message": message or default,
            "type": kind,
            "param": None,
            "code": code,
        }
        return (json.dumps({"error": error}, indent=4) + "\n").encode()
    kind, default = ANTHROPIC_ERRORS.get(status, ("api_error", f"HTTP {status}"))
    return _json(
        {
            "type": "error",
            "error": {"type": kind, "message": message or default},
            "request_id": "req_fake" + uuid.uuid4().hex[:16],
        }
    )


def refused_parameter(provider: Provider, body: dict[str, Any] | None) -> str | None:
    """Name the field OpenAI refuses for a reasoning model, if the body has one."""
    model = body.get("model") if body is not None else None
    if provider != "openai" or not isinstance(model, str):
        return None
    if not REASONING_MODEL.match(model):
        return None
    for name in ("max_tokens", "temperature"):
        if name in body:  # type: ignore[operator]
            return name
    return None


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    raw_body: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # FakeProvider.stop joins its own handler threads
    request_queue_size = 128

    def __init__(self, fake: FakeProvider) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _ClientGone(Exception):
    """The client closed the connection while the fake was waiting."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body (or the first chunk) are separate writes: with Nagle
    # the second waits for the client's delayed ACK (~40 ms), a delay real
    # APIs (TCP_NODELAY behind their proxies) do not add.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Bounds an idle keep-alive connection and a client that stops reading.
        self.connection.settimeout(self.server.fake.idle_timeout_s)
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet; tests read ``FakeProvider.requests`` instead."""

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def do_PATCH(self) -> None:
        self._route()

    def do_DELETE(self) -> None:
        self._route()

    def _route(self) -> None:
        fake = self.server.fake
        raw_body = self._read_body()
        path = urlsplit(self.path).path
        if self.command == "GET" and path == "/healthz":
            self._send_json(200, b'{"status":"ok"}', "application/json")
            return
        body = _parse_body(raw_body)
        fake._record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
                raw_body=raw_body,
            )
        )
        if self.command == "POST" and path == MODERATION_PATH:
            self._moderate(body)
            return
        provider: Provider
        if self.command == "POST" and path == OPENAI_PATH:
            provider = "openai"
        elif self.command == "POST" and path == ANTHROPIC_PATH:
            provider = "anthropic"
        else:
            message = f"fake: no route for {self.command} {path}"
            self._send_json(404, error_json("openai", 404, message), "application/json")
            return
        try:
            behaviour = fake._choose(body)
        except ValueError as exc:
            self._send_error(provider, 400, error_json(provider, 400, str(exc)))
            return
        if behaviour.reset:
            self._reset()
            return
        if behaviour.html:
            page = b"<!doctype html><title>Sign in</title><p>Please sign in.</p>"
            self._send_json(200, page, "text/html; charset=utf-8")
            return
        if behaviour.location is not None:
            self._send_json(307, b"", "text/plain", {"Location": behaviour.location})
            return
        if behaviour.status != 200:
            body_bytes = error_body(provider, behaviour.status, fake.fixtures_dir)
            extra = {}
            if behaviour.retry_after is not None:
                extra["retry-after"] = str(behaviour.retry_after)
            self._send_error(provider, behaviour.status, body_bytes, extra)
            return
        refused = behaviour.refuse or refused_parameter(provider, body)
        if refused is not None:
            body_bytes = _read_fixture(
                fake.fixtures_dir, REFUSED_PARAMETER_FIXTURE[refused]
            )
            self._send_error(provider, 400, body_bytes)
            return
        try:
            plan = plan_stream(provider, behaviour, body, fake.fixtures_dir)
        except OSError as exc:
            message = f"fake: cannot read fixture: {exc.strerror}"
            self._send_error(provider, 400, error_json(provider, 400, message))
            return
        self._stream(provider, behaviour, plan)

    def _moderate(self, body: dict[str, Any] | None) -> None:
        text = body.get("input") if body is not None else None
        if not isinstance(text, str):
            message = "fake: moderation input must be a string"
            self._send_error("openai", 400, error_json("openai", 400, message))
            return
        try:
            self._pause(moderation_delay_ms(text))
            if "mod:stall" in text:
                self._pause(self.server.fake.stall_max_s * 1000)
                self._abort()
                return
        except _ClientGone:
            self.close_connection = True
            return
        if "mod:fail" in text:
            self._send_error("openai", 500, error_json("openai", 500))
        elif "mod:malformed" in text:
            self._send_json(200, b'{"results": "none"}', JSON_CONTENT_TYPE["openai"])
        else:
            verdict = _json(moderation_verdict(text, "mod:flag" in text))
            extra = _request_id_header("openai")
            self._send_json(200, verdict, JSON_CONTENT_TYPE["openai"], extra)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_error(
        self,
        provider: Provider,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        extra = _request_id_header(provider)
        if status == 429:
            extra["retry-after"] = "7"
        extra.update(headers or {})
        self._send_json(status, body, JSON_CONTENT_TYPE[provider], extra)

    def _stream(self, provider: Provider, behaviour: Behaviour, plan: Plan) -> None:
        fake = self.server.fake
        stream = fake._stream_opened()
        by_client = False
        try:
            self.send_response(200)
            self.send_header("Content-Type", STREAM_CONTENT_TYPE[provider])
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
            if behaviour.gzip:
                self.send_header("Content-Encoding", "gzip")
            for name, value in _request_id_header(provider).items():
                self.send_header(name, value)
            self.end_headers()
            self._pause(behaviour.ttft_ms)
            writes = plan.writes
            if behaviour.truncate:
                writes = writes[: max(1, len(writes) // 2)]
            if behaviour.gzip:
                writes = [gzip.compress(b"".join(writes))]
            for index, data in enumerate(writes):
                if index:
                    self._pause(behaviour.delay_ms)
                self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
                fake._stream_started(stream)
            fake._stream_started(stream)
            if behaviour.truncate:
                # A chunk that promises 4 KiB, holds a few bytes, and ends.
                self.wfile.write(b"1000\r\ndata: {")
                self.wfile.flush()
                self._abort()
            elif plan.ending == "end":
                self.wfile.write(b"0\r\n\r\n")
            elif plan.ending == "stall":
                self._pause(fake.stall_max_s * 1000)
                self._abort()
            else:
                self._abort()
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            by_client = not fake._stopping
            self.close_connection = True
        except OSError:
            # Our own timeout or shutdown: end the stream, not the thread.
            self.close_connection = True
        finally:
            fake._stream_ended(stream, by_client)

    def _pause(self, milliseconds: float) -> None:
        """Wait, watching the socket; raise _ClientGone if the client leaves."""
        deadline = time.monotonic() + milliseconds / 1000
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], remaining)
            if not readable:
                continue
            try:
                peeked = self.connection.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except ConnectionResetError as exc:
                raise _ClientGone from exc
            if not peeked:
                raise _ClientGone
            # The client sent more bytes (a pipelined request) so EOF cannot be
            # seen; wait out the rest without watching.
            self.server.fake._stopped.wait(remaining)
            return

    def _reset(self) -> None:
        """Answer nothing: reset the connection (RST, not FIN)."""
        self.close_connection = True
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.connection.close()

    def _abort(self) -> None:
        """End the connection with no terminating chunk."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _request_id_header(provider: Provider) -> dict[str, str]:
    name = "x-request-id" if provider == "openai" else "request-id"
    return {name: "req_fake" + uuid.uuid4().hex[:16]}


def _parse_body(raw_body: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw_body)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class FakeProvider:
    """A fake OpenAI-compatible and Anthropic upstream for tests."""

    def __init__(
        self,
        *,
        fixtures_dir: Path | None = None,
        stall_max_s: float = 120.0,
        idle_timeout_s: float = 30.0,
    ) -> None:
        self.fixtures_dir = fixtures_dir or default_fixtures_dir()
        self.stall_max_s = stall_max_s
        self.idle_timeout_s = idle_timeout_s
        self._cond = threading.Condition()
        self._queue: deque[Behaviour] = deque()
        self._requests: list[RecordedRequest] = []
        self._generation = 0
        self._open: dict[int, tuple[int, bool]] = {}  # stream -> (generation, started)
        self._next_stream = 0
        self._started = 0
        self._closed_by_client = 0
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._stopped = threading.Event()
        self._stopping = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeProvider:
        """Bind a free port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeProvider already started")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-provider",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection, open streams included."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stopped.set()
        server.shutdown()
        with self._cond:
            connections = list(self._connections.items())
        for sock, _ in connections:
            _shutdown(sock)
        for _, handler in connections:
            handler.join(timeout=5)
        server.server_close()
        thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeProvider is not started")
        return int(self._server.server_address[1])

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, behaviour: Behaviour) -> None:
        """Answer the next provider request (either endpoint) with ``behaviour``."""
        with self._cond:
            self._queue.append(behaviour)

    def fail_next(
        self, count: int, status: int = 503, retry_after: int | None = None
    ) -> None:
        """Fail the next ``count`` provider requests with ``status``."""
        for _ in range(count):
            self.enqueue(Behaviour(status=status, retry_after=retry_after))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    @property
    def open_streams(self) -> int:
        with self._cond:
            return len(self._open)

    @property
    def closed_by_client(self) -> int:
        with self._cond:
            return self._closed_by_client

    @property
    def streams_started(self) -> int:
        with self._cond:
            return self._started

    def wait_for_requests(self, n: int, timeout: float = 10) -> list[RecordedRequest]:
        """Wait until ``n`` requests arrived; raise TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= n, timeout):
                raise TimeoutError(
                    f"fake provider got {len(self._requests)} of {n} requests"
                )
            return list(self._requests)

    def wait_for_stream_start(self, n: int = 1, timeout: float = 10) -> None:
        """Wait until ``n`` response bodies began; raise TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._started >= n, timeout):
                raise TimeoutError(
                    f"fake provider started {self._started} of {n} streams"
                )

    def wait_all_closed(self, timeout: float = 10) -> bool:
        """Wait until no stream is being written or held open."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._open, timeout)

    def reset(self) -> None:
        """Forget requests, counters and queued behaviours from earlier tests.

        Streams still open keep counting in ``open_streams`` but no longer
        touch ``closed_by_client`` or ``streams_started`` when they end.
        """
        with self._cond:
            self._generation += 1
            self._queue.clear()
            self._requests.clear()
            self._started = 0
            self._closed_by_client = 0
            self._cond.notify_all()

    def _choose(self, body: dict[str, Any] | None) -> Behaviour:
        with self._cond:
            if self._queue:
                return self._queue.popleft()
        text = last_user_text(body)
        directive = parse_directive(text) if text is not None else None
        return directive or Behaviour()

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    def _stream_opened(self) -> int:
        with self._cond:
            self._next_stream += 1
            self._open[self._next_stream] = (self._generation, False)
            return self._next_stream

    def _stream_started(self, stream: int) -> None:
        with self._cond:
            generation, started = self._open[stream]
            if started:
                return
            self._open[stream] = (generation, True)
            if generation == self._generation:
                self._started += 1
                self._cond.notify_all()

    def _stream_ended(self, stream: int, by_client: bool) -> None:
        with self._cond:
            generation, _ = self._open.pop(stream)
            if by_client and generation == self._generation:
                self._closed_by_client += 1
            self._cond.notify_all()

    def _track(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections[sock] = threading.current_thread()
            stopping = self._stopping
        if stopping:
            _shutdown(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections.pop(sock, None)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
