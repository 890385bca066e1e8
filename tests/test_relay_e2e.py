"""The relay end to end: real gunicorn + gevent, a real fake provider over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from chatapp.upstream.sse_decoder import SSEDecoder
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import anthropic_settings
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.fake_provider import default_fixtures_dir

pytestmark = pytest.mark.e2e

FIXTURES = default_fixtures_dir()


def fixture_events(name: str) -> list[dict[str, Any]]:
    """Decode a recorded provider body into its JSON payloads."""
    events = SSEDecoder().feed((FIXTURES / name).read_bytes())
    return [json.loads(e.data) for e in events if e.data != "[DONE]"]


def openai_fixture_text(name: str) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for p in fixture_events(name)
        for c in p.get("choices", [])
    )


def anthropic_fixture_text(name: str) -> str:
    return "".join(
        p["delta"].get("text", "")
        for p in fixture_events(name)
        if p.get("type") == "content_block_delta"
    )


def assert_well_formed(events: list[Any]) -> None:
    """Ids run 1..n, `start` opens, exactly one `done` closes."""
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert events[0].event == "start"
    assert [e.event for e in events].count("done") == 1
    assert events[-1].event == "done"


# -- demo, with no settings at all ------------------------------------------------


def test_demo_streams_an_answer_with_no_settings(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory()
    client = ChatClient(service.url)
    turn, events = client.answer("What is chatapp?")
    assert_well_formed(events)
    start = data_of(events, "start")[0]
    assert start == {
        "id": turn.id,
        "conversation_id": turn.conversation_id,
        "provider": "demo",
        "model": "demo",
        "cached": False,
    }
    text = text_of(events)
    assert "What is chatapp?" in text
    assert len(data_of(events, "delta")) > 20
    assert data_of(events, "done") == [{"finish_reason": "stop"}]
    assert "secret key" in service.log().lower() or "SECRET_KEY" in service.log()


def test_stream_headers_and_retry_line(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn = client.start("hello")
    response = client.open_stream(turn)
    try:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-cache, no-transform"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers.get("Content-Encoding", "identity") == "identity"
        first = next(response.raw.stream(64, decode_content=False))
        assert first.startswith(b"retry: ")
    finally:
        response.close()


def test_post_returns_201_with_location_and_urls(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    response = client.post(message="hi")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "conversation_id", "stream_url", "cancel_url"}
    assert response.headers["Location"] == body["stream_url"]
    assert "t=" in body["stream_url"] and "t=" in body["cancel_url"]


# -- the providers' exact text, for every framing -----------------------------------

OPENAI_CASES = [
    ("openai-chat-stream.txt", ""),
    ("openai-chat-stream.txt", "crlf"),
    ("openai-chat-stream.txt", "cr"),
    ("openai-chat-stream.txt", "chunk=1"),
    ("openai-chat-stream.txt", "chunk=7 comments"),
    ("openai-chat-stream-include-usage.txt", ""),
    ("openai-chat-stream-tool-call.txt", "crlf chunk=3"),
]


@pytest.mark.parametrize(("fixture", "options"), OPENAI_CASES)
def test_openai_relay_gives_back_exactly_the_upstream_text(
    openai_service: Service, fixture: str, options: str
) -> None:
    client = ChatClient(openai_service.url)
    _, events = client.answer(f"fake: fixture={fixture} {options}".strip())
    assert_well_formed(events)
    assert text_of(events) == openai_fixture_text(fixture)
    usage = [p["usage"] for p in fixture_events(fixture) if p.get("usage")][-1]
    assert data_of(events, "usage") == [
        {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
        }
    ]
    reason = [
        c["finish_reason"]
        for p in fixture_events(fixture)
        for c in p.get("choices", [])
        if c.get("finish_reason")
    ][-1]
    expected = {"stop": "stop", "length": "length", "tool_calls": "stop"}[reason]
    assert data_of(events, "done") == [{"finish_reason": expected}]


ANTHROPIC_CASES = [
    ("anthropic-messages-stream.txt", ""),
    ("anthropic-messages-stream.txt", "crlf chunk=1"),
    ("anthropic-messages-stream.txt", "cr comments"),
    ("anthropic-messages-stream-padded-tool-use.txt", "chunk=5"),
]


@pytest.mark.parametrize(("fixture", "options"), ANTHROPIC_CASES)
def test_anthropic_relay_gives_back_exactly_the_upstream_text(
    anthropic_service: Service, fixture: str, options: str
) -> None:
    client = ChatClient(anthropic_service.url)
    _, events = client.answer(f"fake: fixture={fixture} {options}".strip())
    assert_well_formed(events)
    assert text_of(events) == anthropic_fixture_text(fixture)
    payloads = fixture_events(fixture)
    outputs = [
        p["usage"]["output_tokens"]
        for p in payloads
        if p.get("type") == "message_delta"
    ]
    assert data_of(events, "usage")[-1]["output_tokens"] == outputs[-1]
    stop = [
        p["delta"]["stop_reason"] for p in payloads if p.get("type") == "message_delta"
    ][-1]
    expected = {"end_turn": "stop", "max_tokens": "length"}[stop]
    assert data_of(events, "done") == [{"finish_reason": expected}]


HOSTILE_TEXT = (
    'line one\n\nevent: done\ndata: {"finish_reason":"stop"}\n\n'
    "id: 999\r\nretry: 1\r\n: comment\r\n"
    "unicode ✓ 😀 and a split \u00e9\u0301 accent <script>alert(1)</script>"
)


@pytest.mark.parametrize("settings", [openai_settings, anthropic_settings])
def test_hostile_text_cannot_end_or_forge_an_event(
    module_services: ServiceFactory, fake_provider: FakeProvider, settings: Any
) -> None:
    service = module_services(**settings(fake_provider))
    client = ChatClient(service.url)
    directive = Behaviour(text=HOSTILE_TEXT, pieces=2, chunk=5).as_directive()
    _, events = client.answer(directive)
    assert_well_formed(events)
    assert text_of(events) == HOSTILE_TEXT


def test_context_and_bounds_are_sent_upstream(
    openai_service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(openai_service.url)
    turn, _ = client.answer("fake: | first answer")
    client.answer("second question", conversation_id=turn.conversation_id)
    upstream = fake_provider.wait_for_requests(2)[-1]
    assert upstream.path == "/v1/chat/completions"
    assert upstream.headers["authorization"] == "Bearer test-openai-key-not-secret"
    body = upstream.body
    assert body is not None
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 1024
    roles = [(m["role"], m["content"]) for m in body["messages"]]
    assert roles[0][0] == "system"
    assert roles[1:] == [
        ("user", "fake: | first answer"),
        ("assistant", "first answer"),
        ("user", "second question"),
    ]


def test_anthropic_request_shape(
    anthropic_service: Service, fake_provider: FakeProvider
) -> None:
    ChatClient(anthropic_service.url).answer("hello")
    upstream = fake_provider.wait_for_requests(1)[0]
    assert upstream.path == "/v1/messages"
    assert upstream.headers["x-api-key"] == "test-anthropic-key-not-secret"
    assert upstream.headers["anthropic-version"] == "2023-06-01"
    assert upstream.body is not None
    assert upstream.body["system"]
    assert upstream.body["max_tokens"] == 1024
    assert upstream.body["messages"] == [{"role": "user", "content": "hello"}]


# -- upstream failures end the turn with SPEC's codes ------------------------------

FAILURES = [
    ("status=401", "provider_error"),
    ("status=403", "provider_error"),
    ("status=404", "provider_error"),
    ("status=429", "provider_rate_limited"),
    ("status=500", "provider_unavailable"),
    ("status=503", "provider_unavailable"),
    ("status=529", "provider_unavailable"),
    # after text: OpenAI's server_error chunk, Anthropic's overloaded_error
    ("midstream_error", "provider_unavailable"),
    ("malformed", "provider_error"),
    ("drop_after=3", "provider_unavailable"),
]


@pytest.mark.parametrize("settings", [openai_settings, anthropic_settings])
@pytest.mark.parametrize(("options", "code"), FAILURES)
def test_upstream_failure_ends_with_error_then_done(
    module_services: ServiceFactory,
    fake_provider: FakeProvider,
    settings: Any,
    options: str,
    code: str,
) -> None:
    service = module_services(**settings(fake_provider))
    _, events = ChatClient(service.url).answer(f"fake: {options} | some answer text")
    assert_well_formed(events)
    errors = data_of(events, "error")
    assert len(errors) == 1
    assert errors[0]["code"] == code
    assert isinstance(errors[0]["retryable"], bool) and errors[0]["message"]
    assert data_of(events, "done") == [{"finish_reason": "error"}]
    assert [e.event for e in events][-2:] in (["error", "done"], ["usage", "done"])
    assert fake_provider.wait_all_closed(5)


def test_stall_ends_with_provider_timeout_and_closes_upstream(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = module_services(
        **openai_settings(fake_provider, CHATAPP_UPSTREAM_IDLE_TIMEOUT="1")
    )
    _, events = ChatClient(service.url).answer("fake: stall_after=3 | a b c d e f g")
    assert data_of(events, "error")[0]["code"] == "provider_timeout"
    assert data_of(events, "done") == [{"finish_reason": "error"}]
    assert fake_provider.wait_all_closed(5)
    assert fake_provider.closed_by_client == 1


def test_whole_turn_deadline_ends_with_provider_timeout(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = module_services(
        **openai_settings(
            fake_provider,
            CHATAPP_UPSTREAM_TOTAL_TIMEOUT="1",
            CHATAPP_UPSTREAM_IDLE_TIMEOUT="1",
        )
    )
    slow = Behaviour(text="tick " * 100, delay_ms=100, pieces=5)
    _, events = ChatClient(service.url).answer(slow.as_directive())
    assert 0 < len(text_of(events)) < len(slow.text or "")
    assert data_of(events, "error")[0]["code"] == "provider_timeout"
    assert data_of(events, "done") == [{"finish_reason": "error"}]
    assert fake_provider.wait_all_closed(5)
    assert fake_provider.closed_by_client == 1


def test_unreachable_provider_is_unavailable(service_factory: ServiceFactory) -> None:
    with socket_closed_port() as port:
        service = service_factory(
            CHATAPP_PROVIDER="openai",
            CHATAPP_PROVIDER_BASE_URL=f"http://127.0.0.1:{port}/v1",
            OPENAI_API_KEY="x",
        )
        _, events = ChatClient(service.url).answer("hello")
    assert data_of(events, "error")[0]["code"] == "provider_unavailable"
    assert data_of(events, "done") == [{"finish_reason": "error"}]


class socket_closed_port:  # noqa: N801 - used as a context manager
    """A port that refuses connections: bound, never listening."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# -- cancel ---------------------------------------------------------------------


def test_cancel_mid_answer_closes_the_upstream_connection(
    openai_service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(openai_service.url)
    turn = client.start("fake: stall_after=4 | one two three four five six")
    fake_provider.wait_for_stream_start(1)
    first = client.events(turn, limit=2)
    assert [e.event for e in first] == ["start", "delta"]
    assert client.cancel(turn).status_code == 202
    assert fake_provider.wait_all_closed(2)
    assert fake_provider.closed_by_client == 1
    events = client.events(turn, last_event_id=2)
    assert events[-1].event == "done"
    assert json.loads(events[-1].data) == {"finish_reason": "cancelled"}


def test_cancel_before_the_first_token(
    openai_service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(openai_service.url)
    turn = client.start("fake: ttft_ms=20000 | never sent")
    fake_provider.wait_for_requests(1)
    assert client.cancel(turn).status_code == 202
    assert fake_provider.wait_all_closed(2)
    events = client.events(turn)
    assert_well_formed(events)
    assert text_of(events) == ""
    assert data_of(events, "done") == [{"finish_reason": "cancelled"}]


def test_cancel_a_finished_turn_is_a_202_noop(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn, events = client.answer("fake: | done already")
    assert client.cancel(turn).status_code == 202
    again = client.events(turn)
    assert again == events


def test_cancel_with_the_owners_page_token(
    openai_service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(openai_service.url)
    turn = client.start("fake: stall_after=2 | a b c d")
    fake_provider.wait_for_stream_start(1)
    url = f"{openai_service.url}/api/chat/{turn.id}/cancel"
    stranger = ChatClient(openai_service.url)
    assert stranger.http.post(url, json={"token": stranger.token}).status_code == 404
    assert client.http.post(url, json={"token": client.token}).status_code == 202
    assert fake_provider.wait_all_closed(2)


def test_cancel_with_bad_tokens(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn, _ = client.answer("fake: | x")
    url = f"{openai_service.url}/api/chat/{turn.id}/cancel"
    assert client.http.post(url + "?t=forged").status_code == 403
    assert client.http.post(url, json={}).status_code == 403


# -- resume, replay, polling, heartbeats -------------------------------------------


def test_resume_after_drop_repeats_nothing(
    openai_service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(openai_service.url)
    answer = "The quick brown fox jumps over the lazy dog, twice over."
    turn = client.start(Behaviour(text=answer, delay_ms=20, pieces=2).as_directive())
    head = client.events(turn, limit=5)
    tail = client.events(turn, last_event_id=int(head[-1].id or 0))
    events = head + tail
    assert_well_formed(events)
    assert text_of(events) == answer
    assert len(fake_provider.requests) == 1


def test_resume_with_query_parameter(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn, events = client.answer("fake: | abcdefghij")
    response = client.http.get(
        f"{openai_service.url}{turn.stream_url}&last_event_id=3",
        stream=True,
        timeout=10,
    )
    tail = SSEDecoder().feed(response.content)
    assert tail == events[3:]


def test_reconnect_after_done_gets_204(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn, events = client.answer("fake: | short")
    response = client.open_stream(turn, last_event_id=int(events[-1].id or 0))
    assert response.status_code == 204


def test_a_poll_after_done_gets_204_at_once(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn, events = client.answer("fake: | short")
    last = int(events[-1].id or 0)
    url = f"{openai_service.url}{turn.stream_url}&poll=1&last_event_id={last}"
    response = client.http.get(url, timeout=10)
    assert response.status_code == 204
    assert response.content == b""


def test_history_sent_upstream_keeps_within_its_bound(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> None:
    bound = 300
    service = module_services(
        **openai_settings(fake_provider, CHATAPP_HISTORY_MAX_CHARS=str(bound))
    )
    client = ChatClient(service.url)
    answer = "word " * 20  # 100 characters a turn
    turn, _ = client.answer(f"fake: | {answer}")
    for _ in range(4):
        client.answer(f"fake: | {answer}", conversation_id=turn.conversation_id)
    last = client.answer("fake: | the end", conversation_id=turn.conversation_id)
    assert data_of(last[1], "done") == [{"finish_reason": "stop"}]
    body = fake_provider.requests[-1].body
    assert body is not None
    earlier = [m for m in body["messages"] if m["role"] != "system"][:-1]
    # The newest earlier messages that fit, and the conversation still
    # opens with the user.
    assert 0 < sum(len(m["content"]) for m in earlier) <= bound
    assert earlier[0]["role"] == "user"
    assert len(earlier) < 10


def test_unknown_turn_404_and_bad_stream_token_403(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn, _ = client.answer("fake: | x")
    other, _ = client.answer("fake: | y")
    base = f"{openai_service.url}/api/chat"
    token = turn.stream_url.split("t=")[1]
    other_token = other.stream_url.split("t=")[1]
    assert client.http.get(f"{base}/{turn.id}/events?t=forged").status_code == 403
    assert client.http.get(f"{base}/{turn.id}/events").status_code == 403
    assert (
        client.http.get(f"{base}/{turn.id}/events?t={other_token}").status_code == 403
    )
    missing = client.http.get(f"{base}/AAAAAAAAAAAAAAAAAAAAAA/events?t={token}")
    assert missing.status_code == 403  # the token names another turn
    for response in (client.http.get(f"{base}/{turn.id}/events?t=forged"),):
        assert response.json()["error"]["code"] == "invalid_token"


def test_poll_returns_events_then_done(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn, events = client.answer("fake: | polled answer")
    url = f"{openai_service.url}{turn.stream_url}&poll=1&last_event_id=1"
    body = client.http.get(url, timeout=30).json()
    assert body["done"] is True
    assert [e["id"] for e in body["events"]] == [int(e.id or 0) for e in events[1:]]
    assert [e["event"] for e in body["events"]] == [e.event for e in events[1:]]
    assert [e["data"] for e in body["events"]] == [e.data for e in events[1:]]


def test_poll_waits_for_the_next_event(
    openai_service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(openai_service.url)
    turn = client.start("fake: ttft_ms=300 | later")
    url = f"{openai_service.url}{turn.stream_url}&poll=1&last_event_id=1"
    body = client.http.get(url, timeout=30).json()
    assert body["events"] and body["events"][0]["event"] == "delta"


def test_heartbeat_comment_during_silence(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = module_services(
        **openai_settings(fake_provider, CHATAPP_HEARTBEAT_SECONDS="0.3")
    )
    client = ChatClient(service.url)
    turn = client.start("fake: ttft_ms=1500 | after a pause")
    response = client.open_stream(turn)
    raw = b""
    try:
        for data in response.raw.stream(256, decode_content=False):
            raw += data
            if b": keep-alive\n\n" in raw:
                break
    finally:
        response.close()
    assert b": keep-alive\n\n" in raw
    assert b"event: delta" not in raw.split(b": keep-alive")[0]


def test_orphaned_turn_is_cancelled_upstream(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = module_services(
        **openai_settings(
            fake_provider, CHATAPP_ORPHAN_SECONDS="1", CHATAPP_HEARTBEAT_SECONDS="0.3"
        )
    )
    client = ChatClient(service.url)
    turn = client.start("fake: stall_after=3 | a b c d e f")
    fake_provider.wait_for_stream_start(1)
    client.events(turn, limit=2)  # read a little, then vanish
    assert fake_provider.wait_all_closed(8)
    events = client.events(turn, last_event_id=2)
    assert data_of(events, "done") == [{"finish_reason": "cancelled"}]


# -- exactly once -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "field"])
def test_idempotent_retry_returns_the_same_turn(
    openai_service: Service, fake_provider: FakeProvider, how: str
) -> None:
    client = ChatClient(openai_service.url)
    key = f"retry-key-{how}"
    extra: dict[str, Any] = (
        {"headers": {"Idempotency-Key": key}}
        if how == "header"
        else {"client_turn_id": key}
    )
    first = client.post(message="fake: | once", **dict(extra))
    second = client.post(message="fake: | once", **dict(extra))
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    client.events(client_turn(first.json()))
    assert len(fake_provider.requests) == 1


def client_turn(body: dict[str, str]) -> Any:
    from tests.conftest import Turn

    return Turn(
        body["id"], body["conversation_id"], body["stream_url"], body["cancel_url"]
    )


# -- every error row of POST /api/chat ---------------------------------------------


def error_of(response: requests.Response) -> tuple[int, str]:
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    assert "Traceback" not in response.text
    return response.status_code, response.json()["error"]["code"]


def test_token_errors(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    url = openai_service.url + "/api/chat"
    assert error_of(client.http.post(url, json={"message": "hi"})) == (
        403,
        "invalid_token",
    )
    assert error_of(
        client.http.post(url, json={"message": "hi", "token": "x.y.z"})
    ) == (
        403,
        "invalid_token",
    )
    stream_token = client.start("fake: | x").stream_url.split("t=")[1]
    assert error_of(
        client.http.post(url, json={"message": "hi", "token": stream_token})
    ) == (403, "invalid_token")


def test_expired_and_foreign_tokens(service_factory: ServiceFactory) -> None:
    from itsdangerous import TimestampSigner
    from itsdangerous import URLSafeTimedSerializer

    from chatapp.tokens import PAGE_SALT

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return 1_000_000_000  # 2001

    service = service_factory(CHATAPP_SECRET_KEY="the-test-key")
    url = service.url + "/api/chat"
    expired = URLSafeTimedSerializer(
        "the-test-key", salt=PAGE_SALT, signer=PastSigner
    ).dumps({"v": "someone"})
    foreign = URLSafeTimedSerializer("another-key", salt=PAGE_SALT).dumps({"v": "x"})
    http = requests.Session()
    assert error_of(http.post(url, json={"message": "hi", "token": expired})) == (
        403,
        "token_expired",
    )
    assert error_of(http.post(url, json={"message": "hi", "token": foreign})) == (
        403,
        "invalid_token",
    )
    # Within the 7-day grace a refresh would work; this one is decades old.
    refresh = http.post(service.url + "/api/token", json={"token": expired})
    assert error_of(refresh) == (403, "token_expired")


BAD_BODIES = [
    ({"json": {"message": ""}}, (400, "invalid_input")),
    ({"json": {"message": "  \n\t "}}, (400, "invalid_input")),
    ({"json": {"message": 123}}, (400, "invalid_input")),
    ({"json": {"message": ["a"]}}, (400, "invalid_input")),
    ({"json": {"message": "hi", "conversation_id": 5}}, (400, "invalid_input")),
    ({"json": {"message": "x" * 4001}}, (400, "message_too_long")),
    (
        {"json": {"message": "hi", "conversation_id": "nope-nope-nope"}},
        (404, "not_found"),
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), BAD_BODIES)
def test_bad_input_rows(openai_service: Service, kwargs: Any, expected: Any) -> None:
    client = ChatClient(openai_service.url)
    kwargs["json"]["token"] = client.token
    response = client.http.post(openai_service.url + "/api/chat", **kwargs)
    assert error_of(response) == expected


def test_malformed_json_and_oversized_bodies(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    url = openai_service.url + "/api/chat"
    headers = {"Content-Type": "application/json", "X-Chat-Token": client.token}
    assert error_of(client.http.post(url, data=b"{not json", headers=headers)) == (
        400,
        "invalid_input",
    )
    assert error_of(client.http.post(url, data=b"[1, 2]", headers=headers)) == (
        400,
        "invalid_input",
    )
    big = json.dumps({"message": "x" * 200_000, "token": client.token})
    assert error_of(client.http.post(url, data=big, headers=headers)) == (
        413,
        "payload_too_large",
    )
    form = {"message": "y" * 200_000, "token": client.token}
    assert error_of(client.http.post(url, data=form)) == (413, "payload_too_large")


def test_messages_at_the_limit_are_accepted(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    assert client.post(message="é" * 4000).status_code == 201


def test_someone_elses_conversation_is_404(openai_service: Service) -> None:
    owner = ChatClient(openai_service.url)
    turn, _ = owner.answer("fake: | mine")
    stranger = ChatClient(openai_service.url)
    response = stranger.post(message="hi", conversation_id=turn.conversation_id)
    assert error_of(response) == (404, "not_found")


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_forms_start_turns(openai_service: Service, encoding: str) -> None:
    client = ChatClient(openai_service.url)
    url = openai_service.url + "/api/chat"
    fields = {"message": "fake: | from a form", "token": client.token}
    if encoding == "urlencoded":
        response = client.http.post(url, data=fields)
    else:
        response = client.http.post(
            url, files={k: (None, v) for k, v in fields.items()}
        )
    assert response.status_code == 201, response.text
    events = client.events(client_turn(response.json()))
    assert text_of(events) == "from a form"


def test_unknown_api_route_and_method_are_json(openai_service: Service) -> None:
    http = requests.Session()
    assert error_of(http.get(openai_service.url + "/api/nope")) == (404, "not_found")
    assert error_of(http.get(openai_service.url + "/api/chat")) == (
        405,
        "method_not_allowed",
    )


# -- conversations and tokens ------------------------------------------------------


def test_conversation_history_for_its_owner_only(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn, _ = client.answer("fake: | first")
    client.answer("fake: | second", conversation_id=turn.conversation_id)
    url = f"{openai_service.url}/api/conversations/{turn.conversation_id}"
    body = client.http.get(url, headers={"X-Chat-Token": client.token}).json()
    assert body["id"] == turn.conversation_id
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("user", "fake: | first"),
        ("assistant", "first"),
        ("user", "fake: | second"),
        ("assistant", "second"),
    ]
    assert all(isinstance(m["created_at"], float) for m in body["messages"])
    by_query = client.http.get(url, params={"token": client.token})
    assert by_query.json() == body
    stranger = ChatClient(openai_service.url)
    assert error_of(
        stranger.http.get(url, headers={"X-Chat-Token": stranger.token})
    ) == (
        404,
        "not_found",
    )
    assert error_of(stranger.http.get(url)) == (404, "not_found")


def test_token_refresh_keeps_the_identity(openai_service: Service) -> None:
    client = ChatClient(openai_service.url)
    turn, _ = client.answer("fake: | kept")
    response = client.http.post(
        openai_service.url + "/api/token", json={"token": client.token}
    )
    assert response.status_code == 200
    fresh = response.json()["token"]
    url = f"{openai_service.url}/api/conversations/{turn.conversation_id}"
    assert client.http.get(url, headers={"X-Chat-Token": fresh}).status_code == 200


def test_pages_send_security_headers_and_no_key(openai_service: Service) -> None:
    for path in ("/", "/embed"):
        response = requests.get(openai_service.url + path, timeout=10)
        assert response.status_code == 200
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "test-openai-key-not-secret" not in response.text
        assert '<meta name="chatapp-token"' in response.text
    assert (
        "frame-ancestors 'self'"
        in requests.get(openai_service.url + "/").headers["Content-Security-Policy"]
    )


def test_ops_endpoints(openai_service: Service) -> None:
    assert requests.get(openai_service.url + "/healthz").status_code == 200
    assert requests.get(openai_service.url + "/readyz").status_code == 200


def test_key_never_reaches_the_browser(
    openai_service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(openai_service.url)
    turn, events = client.answer("fake: status=401 | x")
    raw = json.dumps([e.data for e in events])
    assert "test-openai-key-not-secret" not in raw
    assert Path(openai_service.log_path).exists()


# -- answer cache -------------------------------------------------------------------


def test_cached_first_turn_answer_is_replayed_without_a_provider_call(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = module_services(**openai_settings(fake_provider, CHATAPP_CACHE_TTL="60"))
    question = "fake: | The cached answer, word for word."
    first_turn, first = ChatClient(service.url).answer(question)
    second_turn, second = ChatClient(service.url).answer(question)
    assert text_of(second) == text_of(first) == "The cached answer, word for word."
    assert data_of(first, "start")[0]["cached"] is False
    assert data_of(second, "start")[0]["cached"] is True
    assert data_of(second, "usage") == []
    assert data_of(second, "done") == [{"finish_reason": "stop"}]
    assert_well_formed(second)
    assert len(fake_provider.requests) == 1
    assert second_turn.conversation_id != first_turn.conversation_id


def test_cache_skips_follow_ups_errors_and_other_questions(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = module_services(**openai_settings(fake_provider, CHATAPP_CACHE_TTL="60"))
    client = ChatClient(service.url)
    turn, _ = client.answer("fake: | opening")
    client.answer("fake: | opening", conversation_id=turn.conversation_id)
    client.answer("fake: status=500 | failing")
    _, retried = client.answer("fake: status=500 | failing")
    client.answer("fake: | another question")
    assert len(fake_provider.requests) == 5
    assert data_of(retried, "start")[0]["cached"] is False


@pytest.mark.parametrize(
    "question",
    [
        "fake: | Is my order 55123 for Jane Roe shipped?",
        "fake: | Write to jane.roe@example.com about my order, please.",
        "fake: | Call me back on +44 20 7946 0958 about my parcel.",
    ],
)
def test_the_cache_never_tells_one_visitor_what_another_asked(
    module_services: ServiceFactory, fake_provider: FakeProvider, question: str
) -> None:
    """A question with personal data is never cached: the next visitor asking
    exactly the same learns nothing from `cached` (or from a missing call)."""
    service = module_services(**openai_settings(fake_provider, CHATAPP_CACHE_TTL="60"))
    ChatClient(service.url).answer(question)  # Jane asks

    _, probe = ChatClient(service.url).answer(question)  # someone else probes

    assert data_of(probe, "start")[0]["cached"] is False
    assert len(fake_provider.requests) == 2
    assert data_of(probe, "usage") != []


def test_the_cache_still_answers_questions_without_personal_data(
    module_services: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = module_services(**openai_settings(fake_provider, CHATAPP_CACHE_TTL="60"))
    question = "fake: | When are you open on Sundays?"
    ChatClient(service.url).answer(question)
    _, again = ChatClient(service.url).answer(question)
    assert data_of(again, "start")[0]["cached"] is True
    assert len(fake_provider.requests) == 1
