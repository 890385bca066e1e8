"""The fake provider speaks the providers' wire formats over real HTTP."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.exceptions import ChunkedEncodingError
from urllib3.exceptions import ProtocolError

from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.fake_provider import anthropic_events
from tests.fake_provider import default_fixtures_dir
from tests.fake_provider import openai_events
from tests.fake_provider import parse_directive
from tests.fake_provider import split_events

FIXTURES = default_fixtures_dir()
OPENAI_FIXTURE = (FIXTURES / "openai-chat-stream.txt").read_bytes()
ANTHROPIC_FIXTURE = (FIXTURES / "anthropic-messages-stream.txt").read_bytes()
RECORDING = {"openai": OPENAI_FIXTURE, "anthropic": ANTHROPIC_FIXTURE}
TRICKY_TEXT = (
    'Line one\nline "two"\r\n\n\nevent: done\n\ndata: [DONE]\r\n'
    "<script>alert('x')</script> \\ tab\t ünïcødé 🎉 end"
)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeProvider) -> Iterator[FakeProvider]:
    server.reset()
    yield server
    assert server.wait_all_closed(timeout=10)


class Upstream:
    """Calls the fake the way the service's provider adapters do."""

    def __init__(self, fake: FakeProvider, session: requests.Session) -> None:
        self.fake = fake
        self.session = session

    def call(self, provider: str, content: str | list[Any]) -> requests.Response:
        messages = [{"role": "user", "content": content}]
        return self.chat(provider, messages)

    def chat(self, provider: str, messages: list[dict[str, Any]]) -> requests.Response:
        if provider == "openai":
            return self.session.post(
                self.fake.openai_base_url + "/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": messages,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "max_tokens": 256,
                },
                headers={"Authorization": "Bearer sk-test"},
                stream=True,
                timeout=10,
            )
        return self.session.post(
            self.fake.anthropic_base_url + "/v1/messages",
            json={
                "model": "claude-test",
                "system": "Be brief.",
                "messages": messages,
                "max_tokens": 256,
                "stream": True,
            },
            headers={"x-api-key": "ak-test", "anthropic-version": "2023-06-01"},
            stream=True,
            timeout=10,
        )


@pytest.fixture
def upstream(fake: FakeProvider) -> Iterator[Upstream]:
    with requests.Session() as session:
        yield Upstream(fake, session)


def raw_body(response: requests.Response) -> bytes:
    return bytes(response.raw.read(decode_content=False))


def parse_sse(body: bytes) -> list[tuple[str, str]]:
    """Parse an SSE body into (event, data) pairs; just enough for these tests."""
    events: list[tuple[str, str]] = []
    name = ""
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", body.decode("utf-8")):
        if line == "":
            if data:
                events.append((name or "message", "\n".join(data)))
            name, data = "", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    return events


def answer_text(provider: str, body: bytes) -> str:
    """Join the text deltas of a stream."""
    return joined_deltas(provider, parse_sse(body))


def joined_deltas(provider: str, events: list[tuple[str, str]]) -> str:
    text = ""
    for name, data in events:
        if provider == "openai" and data != "[DONE]":
            choices = json.loads(data)["choices"]
            if choices:
                text += choices[0]["delta"].get("content") or ""
        elif provider == "anthropic" and name == "content_block_delta":
            text += json.loads(data)["delta"]["text"]
    return text


@pytest.mark.parametrize(
    ("provider", "content_type"),
    [
        ("openai", "text/event-stream; charset=utf-8"),
        ("anthropic", "text/event-stream"),
    ],
)
def test_default_answer_is_the_recording_byte_for_byte(
    upstream: Upstream, provider: str, content_type: str
) -> None:
    with upstream.call(provider, "What's the weather?") as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert raw_body(response) == RECORDING[provider]


@pytest.mark.parametrize(
    ("provider", "option", "newline"),
    [
        ("openai", "crlf", b"\r\n"),
        ("openai", "cr", b"\r"),
        ("anthropic", "crlf", b"\r\n"),
        ("anthropic", "cr", b"\r"),
    ],
)
def test_line_endings_are_rewritten(
    upstream: Upstream, provider: str, option: str, newline: bytes
) -> None:
    with upstream.call(provider, f"fake: {option}") as response:
        assert raw_body(response) == RECORDING[provider].replace(b"\n", newline)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_chunk_1_sends_the_identical_body_one_byte_per_http_chunk(
    upstream: Upstream, provider: str
) -> None:
    with upstream.call(provider, "fake: chunk=1") as response:
        chunks = list(response.raw.read_chunked(decode_content=False))
    assert b"".join(chunks) == RECORDING[provider]
    assert {len(chunk) for chunk in chunks} == {1}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "text",
    [TRICKY_TEXT, "", "x", "lone surrogate \ud800 survives"],
    ids=["tricky", "empty", "one-char", "lone-surrogate"],
)
def test_synthesized_text_round_trips(
    upstream: Upstream, provider: str, text: str
) -> None:
    with upstream.call(provider, f"fake: | {text}") as response:
        body = raw_body(response)
    assert answer_text(provider, body) == text


def test_synthesized_openai_stream_has_the_documented_shape(
    upstream: Upstream,
) -> None:
    with upstream.call("openai", "fake: pieces=2 finish=length | abcde") as response:
        events = parse_sse(raw_body(response))
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert events[-1] == ("message", "[DONE]")
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "refusal": None,
    }
    deltas = [chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:4]]
    assert deltas == ["ab", "cd", "e"]
    assert chunks[4]["choices"][0]["finish_reason"] == "length"
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"]["completion_tokens"] == 3
    assert {chunk["model"] for chunk in chunks} == {"gpt-4o-mini"}
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}


def test_synthesized_anthropic_stream_has_the_documented_shape(
    upstream: Upstream,
) -> None:
    with upstream.call("anthropic", "fake: finish=length | Hello") as response:
        events = parse_sse(raw_body(response))
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message_delta = json.loads(events[-2][1])
    assert message_delta["delta"]["stop_reason"] == "max_tokens"
    assert message_delta["usage"] == {"output_tokens": 2}


def test_openai_synthesizer_reproduces_the_recording() -> None:
    recorded = split_events(OPENAI_FIXTURE)
    pieces = [
        json.loads(data)["choices"][0]["delta"]["content"]
        for _, data in parse_sse(b"".join(recorded[1:-3]))
    ]
    synthesized = openai_events(
        pieces,
        model="gpt-4o-2024-08-06",
        ident="chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL",
        created=1727346168,
        fingerprint="fp_5050236cbd",
        prompt_tokens=14,
    )
    assert b"".join(synthesized) == OPENAI_FIXTURE


def test_anthropic_synthesizer_reproduces_the_recording() -> None:
    synthesized = anthropic_events(
        ["Hello", " there", "!"],
        ident="msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK",
        input_tokens=11,
        output_tokens=6,
    )
    assert b"".join(synthesized) == ANTHROPIC_FIXTURE


@pytest.mark.parametrize(
    ("provider", "status", "fixture", "content_type"),
    [
        ("openai", 429, "openai-error-429.json", "application/json; charset=utf-8"),
        ("anthropic", 529, "anthropic-error-529.json", "application/json"),
    ],
)
def test_error_status_serves_the_recorded_error_body(
    upstream: Upstream, provider: str, status: int, fixture: str, content_type: str
) -> None:
    with upstream.call(provider, f"fake: status={status}") as response:
        assert response.status_code == status
        assert response.headers["Content-Type"] == content_type
        assert raw_body(response) == (FIXTURES / fixture).read_bytes()
        assert response.headers.get("retry-after") == ("7" if status == 429 else None)


@pytest.mark.parametrize(
    ("provider", "status", "kind"),
    [
        ("openai", 500, "server_error"),
        ("openai", 401, "invalid_request_error"),
        ("anthropic", 429, "rate_limit_error"),
        ("anthropic", 401, "authentication_error"),
    ],
)
def test_other_error_statuses_use_the_providers_error_shape(
    upstream: Upstream, provider: str, status: int, kind: str
) -> None:
    with upstream.call(provider, f"fake: status={status}") as response:
        assert response.status_code == status
        body = response.json()
    if provider == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == kind
    else:
        assert body["type"] == "error"
        assert body["error"]["type"] == kind


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_drop_after_cuts_the_connection_without_the_last_chunk(
    upstream: Upstream, provider: str
) -> None:
    received: list[bytes] = []
    with upstream.call(provider, "fake: drop_after=3") as response:
        with pytest.raises(ProtocolError):
            for chunk in response.raw.read_chunked(decode_content=False):
                received.append(chunk)
    assert b"".join(received) == b"".join(split_events(RECORDING[provider])[:3])


def test_drop_after_surfaces_as_chunked_encoding_error(upstream: Upstream) -> None:
    with upstream.call("openai", "fake: drop_after=1") as response:
        with pytest.raises(ChunkedEncodingError):
            response.content  # noqa: B018 - reading the body is the point


@pytest.mark.parametrize(
    "directive",
    ["fake: stall_after=2", "fake: ttft_ms=60000", "fake: delay_ms=60000"],
)
def test_client_closing_a_held_stream_is_noticed(
    fake: FakeProvider, upstream: Upstream, directive: str
) -> None:
    with upstream.call("anthropic", directive) as response:
        assert response.status_code == 200
        if "ttft" not in directive:
            fake.wait_for_stream_start(1)
        assert fake.open_streams == 1
    assert fake.wait_all_closed(timeout=5)
    assert fake.closed_by_client == 1


def test_stall_after_holds_the_first_events_then_nothing(
    fake: FakeProvider, upstream: Upstream
) -> None:
    with upstream.call("openai", "fake: stall_after=2") as response:
        fake.wait_for_stream_start(1)
        chunks = response.raw.read_chunked(decode_content=False)
        first_two = next(chunks) + next(chunks)
        assert first_two == b"".join(split_events(OPENAI_FIXTURE)[:2])
        assert fake.open_streams == 1
    assert fake.wait_all_closed(timeout=5)
    assert fake.closed_by_client == 1


def test_finished_streams_are_not_counted_as_closed_by_client(
    fake: FakeProvider, upstream: Upstream
) -> None:
    with upstream.call("openai", "fake: | done") as response:
        raw_body(response)
    assert fake.wait_all_closed()
    assert fake.closed_by_client == 0


def test_stop_closes_a_stalled_stream_promptly() -> None:
    fake = FakeProvider().start()
    with requests.Session() as session:
        upstream = Upstream(fake, session)
        with upstream.call("openai", "fake: stall_after=1") as response:
            fake.wait_for_stream_start(1)
            began = time.monotonic()
            fake.stop()
            assert time.monotonic() - began < 5
            with pytest.raises(ProtocolError):
                raw_body(response)
    assert fake.open_streams == 0
    assert fake.closed_by_client == 0


def test_directive_comes_from_the_last_user_message(upstream: Upstream) -> None:
    messages = [
        {"role": "user", "content": "fake: | earlier"},
        {"role": "assistant", "content": "earlier"},
        {"role": "user", "content": "fake: pieces=1 | Hi"},
    ]
    with upstream.chat("openai", messages) as response:
        events = parse_sse(raw_body(response))
    deltas = [json.loads(data)["choices"] for _, data in events[1:3]]
    assert [choices[0]["delta"]["content"] for choices in deltas] == ["H", "i"]


def test_directive_in_anthropic_content_blocks(upstream: Upstream) -> None:
    blocks = [{"type": "text", "text": "fake: | from blocks"}]
    with upstream.call("anthropic", blocks) as response:
        assert answer_text("anthropic", raw_body(response)) == "from blocks"


def test_queued_behaviour_wins_over_the_directive(
    fake: FakeProvider, upstream: Upstream
) -> None:
    fake.enqueue(Behaviour(text="from the queue"))
    fake.enqueue(Behaviour(status=529))
    with upstream.call("openai", "fake: | from the directive") as response:
        assert answer_text("openai", raw_body(response)) == "from the queue"
    with upstream.call("anthropic", "fake: | from the directive") as response:
        assert response.status_code == 529
        response.content  # noqa: B018 - drain before the next request
    with upstream.call("openai", "fake: | from the directive") as response:
        assert answer_text("openai", raw_body(response)) == "from the directive"


def test_requests_are_recorded_as_sent(fake: FakeProvider, upstream: Upstream) -> None:
    with upstream.call("anthropic", "hello") as response:
        raw_body(response)
    [request] = fake.wait_for_requests(1)
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == "ak-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.body is not None
    assert request.body["messages"] == [{"role": "user", "content": "hello"}]
    assert json.loads(request.raw_body) == request.body


def test_openai_midstream_error_follows_two_content_chunks(
    upstream: Upstream,
) -> None:
    with upstream.call("openai", "fake: midstream_error") as response:
        assert response.status_code == 200
        body = raw_body(response)
    recorded = split_events(OPENAI_FIXTURE)
    error = json.loads(parse_sse(body)[-1][1])
    assert body.startswith(b"".join(recorded[:3]))
    assert error["error"]["type"] == "server_error"
    assert b"[DONE]" not in body


def test_anthropic_midstream_error_is_the_recorded_error_stream(
    upstream: Upstream,
) -> None:
    with upstream.call("anthropic", "fake: midstream_error") as response:
        assert response.status_code == 200
        body = raw_body(response)
    assert body == (FIXTURES / "anthropic-error-stream.txt").read_bytes()


@pytest.mark.parametrize(
    ("provider", "before_error"), [("openai", "abcdef"), ("anthropic", "abc")]
)
def test_midstream_error_after_synthesized_text(
    upstream: Upstream, provider: str, before_error: str
) -> None:
    with upstream.call(provider, "fake: midstream_error | abcdefghijkl") as response:
        events = parse_sse(raw_body(response))
    assert "error" in json.loads(events[-1][1])
    assert joined_deltas(provider, events[:-1]) == before_error


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_malformed_sends_broken_json_after_one_content_event(
    upstream: Upstream, provider: str
) -> None:
    with upstream.call(provider, "fake: malformed") as response:
        events = parse_sse(raw_body(response))
    for _, data in events[:-1]:
        json.loads(data)
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[-1][1])


def test_comments_sit_between_events_and_change_no_data(upstream: Upstream) -> None:
    with upstream.call("anthropic", "fake: comments") as response:
        body = raw_body(response)
    events = split_events(ANTHROPIC_FIXTURE)
    assert body == b": keep-alive comment\n\n".join(events)
    assert parse_sse(body) == parse_sse(ANTHROPIC_FIXTURE)


def test_paced_and_delayed_stream_still_delivers_everything(
    upstream: Upstream,
) -> None:
    directive = "fake: ttft_ms=5 delay_ms=1 chunk=64"
    with upstream.call("anthropic", directive) as response:
        assert raw_body(response) == ANTHROPIC_FIXTURE


def test_named_fixture_is_replayed(upstream: Upstream) -> None:
    name = "openai-chat-stream-tool-call.txt"
    with upstream.call("openai", f"fake: fixture={name}") as response:
        assert raw_body(response) == (FIXTURES / name).read_bytes()


@pytest.mark.parametrize(
    "directive",
    ["fake: bogus", "fake: chunk=x", "fake: crlf=1", "fake: fixture=../secret"],
)
def test_bad_directive_is_a_400_in_the_providers_shape(
    upstream: Upstream, directive: str
) -> None:
    with upstream.call("openai", directive) as response:
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith(("fake:", "fixture must"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("hello", None),
        ("fake:", Behaviour()),
        ("fake: | Hi", Behaviour(text="Hi")),
        ("fake:| Hi", Behaviour(text="Hi")),
        (
            "fake: crlf chunk=1 | a | b",
            Behaviour(text="a | b", line_ending="crlf", chunk=1),
        ),
        ("fake: |  spaced ", Behaviour(text=" spaced ")),
        ("fake: status=429", Behaviour(status=429)),
        (
            "fake: cr comments malformed",
            Behaviour(line_ending="cr", comments=True, malformed=True),
        ),
        ("fake: stall_after=0 ttft_ms=5", Behaviour(stall_after=0, ttft_ms=5)),
        (
            "fake: finish=length pieces=1 |",
            Behaviour(text="", finish="length", pieces=1),
        ),
    ],
)
def test_parse_directive(content: str, expected: Behaviour | None) -> None:
    assert parse_directive(content) == expected


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour(),
        Behaviour(text="a | b\nc", line_ending="crlf", chunk=2, delay_ms=3),
        Behaviour(fixture="x.txt", comments=True, midstream_error=True, finish="len"),
        Behaviour(text="", drop_after=0, ttft_ms=9, pieces=7, status=503),
    ],
)
def test_as_directive_parses_back(behaviour: Behaviour) -> None:
    assert parse_directive(behaviour.as_directive()) == behaviour


def test_healthz_and_unknown_paths(fake: FakeProvider) -> None:
    with requests.Session() as session:
        health = session.get(f"{fake.anthropic_base_url}/healthz", timeout=5)
        missing = session.get(f"{fake.openai_base_url}/models", timeout=5)
    assert health.status_code == 200
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert "error" in missing.json()


def test_fixtures_dir_can_be_overridden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHATAPP_FIXTURES_DIR", str(tmp_path))
    assert default_fixtures_dir() == tmp_path


# -- reasoning models, refusals and failing first requests ---------------------


@pytest.mark.parametrize(
    ("field", "fixture"),
    [
        ("max_tokens", "openai-error-400-max-tokens.json"),
        ("temperature", "openai-error-400-temperature.json"),
    ],
)
def test_a_reasoning_model_is_refused_what_openai_refuses(
    fake: FakeProvider, field: str, fixture: str
) -> None:
    body: dict[str, Any] = {
        "model": "o4-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_completion_tokens" if field != "max_tokens" else "max_tokens": 256,
    }
    if field == "temperature":
        body["temperature"] = 0.2
    response = requests.post(
        fake.openai_base_url + "/chat/completions", json=body, timeout=10
    )
    assert response.status_code == 400
    assert response.content == (FIXTURES / fixture).read_bytes()
    body.pop(field)
    body["max_completion_tokens"] = 256
    ok = requests.post(
        fake.openai_base_url + "/chat/completions", json=body, timeout=10
    )
    assert ok.status_code == 200


def test_refuse_answers_any_model_with_the_recorded_400(upstream: Upstream) -> None:
    with upstream.call("openai", "fake: refuse=max_tokens") as response:
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "max_tokens"


def test_fail_next_fails_that_many_requests_then_answers(
    fake: FakeProvider, upstream: Upstream
) -> None:
    fake.fail_next(2, 503, retry_after=3)
    statuses = []
    for _ in range(3):
        with upstream.call("openai", "hello") as response:
            statuses.append((response.status_code, response.headers.get("retry-after")))
    assert statuses == [(503, "3"), (503, "3"), (200, None)]


def test_overloaded_openai_sends_the_error_chunk_before_any_text(
    upstream: Upstream,
) -> None:
    with upstream.call("openai", "fake: overloaded") as response:
        assert response.status_code == 200
        events = parse_sse(raw_body(response))
    chunks = [json.loads(data) for _, data in events]
    assert "error" not in chunks[0] and chunks[0]["choices"][0]["delta"]["role"]
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks[:-1])
    assert chunks[-1]["error"]["type"] == "server_error"


def test_overloaded_sends_the_recorded_error_event_before_any_text(
    upstream: Upstream,
) -> None:
    with upstream.call("anthropic", "fake: overloaded") as response:
        assert response.status_code == 200
        events = parse_sse(raw_body(response))
    names = [name for name, _ in events]
    assert "content_block_delta" not in names
    assert names[-1] == "error"
    assert json.loads(events[-1][1])["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(
    "fixture",
    ["openai-compat-reasoning-content-stream.txt", "anthropic-thinking-stream.txt"],
)
def test_reasoning_recordings_replay_byte_for_byte(
    upstream: Upstream, fixture: str
) -> None:
    provider = "openai" if fixture.startswith("openai") else "anthropic"
    with upstream.call(provider, f"fake: fixture={fixture}") as response:
        assert raw_body(response) == (FIXTURES / fixture).read_bytes()
