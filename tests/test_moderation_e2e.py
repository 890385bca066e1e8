"""Moderation before the model (CHATAPP_MODERATION=openai), through gunicorn.

The fake provider answers `POST /v1/moderations` as OpenAI does; directives
in the message (`mod:flag`, `mod:fail`, …) choose its verdict.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import pytest
import requests

from chatapp.extensions import provider_session
from chatapp.upstream.moderation import OpenAIModerator
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.fake_provider import MODERATION_PATH
from tests.fake_provider import OPENAI_PATH
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

KEY = "test-openai-key-not-secret"


def moderated(fake: FakeProvider, **extra: Any) -> dict[str, Any]:
    return openai_settings(
        fake,
        CHATAPP_MODERATION="openai",
        CHATAPP_MODERATION_BASE_URL=fake.openai_base_url,
        **extra,
    )


@pytest.fixture
def service(service_factory: ServiceFactory, fake_provider: FakeProvider) -> Service:
    return service_factory(**moderated(fake_provider))


def paths(fake: FakeProvider) -> list[str]:
    return [r.path for r in fake.requests]


def test_clean_message_is_checked_then_answered(
    service: Service, fake_provider: FakeProvider
) -> None:
    _, events = ChatClient(service.url).answer("hello there")

    assert text_of(events)
    assert data_of(events, "done") == [{"finish_reason": "stop"}]
    assert paths(fake_provider) == [MODERATION_PATH, OPENAI_PATH]
    check = fake_provider.requests[0]
    assert check.body == {"input": "hello there"}
    assert check.headers["authorization"] == f"Bearer {KEY}"


def test_flagged_message_never_reaches_the_model(
    service: Service, fake_provider: FakeProvider
) -> None:
    _, events = ChatClient(service.url).answer("mod:flag something awful")

    assert [e.event for e in events] == ["start", "error", "done"]
    (error,) = data_of(events, "error")
    assert error["code"] == "content_blocked"
    assert error["retryable"] is False
    assert data_of(events, "done") == [{"finish_reason": "content_filter"}]
    assert paths(fake_provider) == [MODERATION_PATH]


@pytest.mark.parametrize(
    ("directive", "why"),
    [
        ("mod:fail", "the endpoint answers 500"),
        ("mod:malformed", "the verdict has no results"),
    ],
)
def test_failed_check_fails_closed(
    service: Service, fake_provider: FakeProvider, directive: str, why: str
) -> None:
    _, events = ChatClient(service.url).answer(f"{directive} hello")

    (error,) = data_of(events, "error")
    assert error["code"] == "moderation_unavailable", why
    assert error["retryable"] is True
    assert data_of(events, "done") == [{"finish_reason": "error"}]
    assert paths(fake_provider) == [MODERATION_PATH]


def test_a_silent_moderation_endpoint_times_out_closed(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **moderated(fake_provider, CHATAPP_MODERATION_TIMEOUT="0.5")
    )
    started = time.monotonic()
    _, events = ChatClient(service.url).answer("mod:stall hello")
    took = time.monotonic() - started

    (error,) = data_of(events, "error")
    assert error["code"] == "moderation_unavailable"
    assert data_of(events, "done") == [{"finish_reason": "error"}]
    assert took < 5
    assert paths(fake_provider) == [MODERATION_PATH]
    assert fake_provider.wait_all_closed()


def test_an_unreachable_moderation_endpoint_fails_closed(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_MODERATION="openai",
            # Nothing listens on port 9 of the loopback: connection refused.
            CHATAPP_MODERATION_BASE_URL="http://127.0.0.1:9/v1",
        )
    )
    _, events = ChatClient(service.url).answer("hello")

    (error,) = data_of(events, "error")
    assert error["code"] == "moderation_unavailable"
    assert fake_provider.requests == []
    assert KEY not in service.log()


def test_blocked_and_unchecked_turns_spend_no_budget(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    # The budget holds exactly one turn's bound: any token charged to a
    # blocked turn would leave too little for the next turn to start.
    service = service_factory(
        **moderated(
            fake_provider,
            CHATAPP_DAILY_TOKEN_BUDGET="1024",
            CHATAPP_MAX_OUTPUT_TOKENS="1024",
        )
    )
    client = ChatClient(service.url)
    for message in ("mod:flag one", "mod:fail two", "mod:flag three"):
        _, events = client.answer(message)
        assert data_of(events, "error"), message

    response = client.post(message="hello after all that")
    assert response.status_code == 201, response.text


def test_moderation_latency_before_the_first_token(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    """Measure what the check adds before the first token, against the fake.

    Two views: the client's (POST to the first delta on the stream) and the
    producer's own `ttft_ms` (turn start to first token, from its log line).
    """
    info = {"CHATAPP_LOG_LEVEL": "info"}
    plain = service_factory(**openai_settings(fake_provider, **info))
    checked = service_factory(**moderated(fake_provider, **info))
    rounds = 40
    client_ms: dict[str, float] = {}
    server_ms: dict[str, float] = {}
    for name, service in (("off", plain), ("on", checked)):
        client = ChatClient(service.url)
        client.answer("warm up")  # connections pooled, code paths warm
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            turn = client.start("fake: | Hi")
            response = client.open_stream(turn)
            for line in response.iter_lines():
                if line.startswith(b"event: delta"):
                    samples.append(time.perf_counter() - started)
                    break
            response.close()
        assert len(samples) == rounds
        client_ms[name] = statistics.median(samples) * 1000
        ttfts = [
            float(line["ttft_ms"])
            for line in map(json.loads, service.log_lines())
            if line.get("event") == "turn.first_token"
        ]
        assert len(ttfts) >= rounds
        server_ms[name] = statistics.median(ttfts[-rounds:])
    added = server_ms["on"] - server_ms["off"]
    print(
        f"\nmoderation latency before the first token (fake on 127.0.0.1, median "
        f"of {rounds}): client view off {client_ms['off']:.1f} ms, on "
        f"{client_ms['on']:.1f} ms; producer ttft off {server_ms['off']:.2f} ms, "
        f"on {server_ms['on']:.2f} ms, added {added:.2f} ms"
    )
    # The check itself, timed alone in this process against the same fake.
    moderator = OpenAIModerator(
        session=provider_session(4),
        base_url=fake_provider.openai_base_url,
        api_key=KEY,
        connect_timeout=5,
        deadline=10,
    )
    moderator.check("warm up")
    calls = []
    for _ in range(200):
        started = time.perf_counter()
        moderator.check("Is this fine?")
        calls.append((time.perf_counter() - started) * 1000)
    calls.sort()
    print(
        f"one moderation call on loopback: median {statistics.median(calls):.2f} ms, "
        f"p95 {calls[189]:.2f} ms"
    )
    assert all(server_ms.values()) and all(client_ms.values())


def model_inputs(fake: FakeProvider) -> list[str]:
    """Every message text the model (not the moderation endpoint) was sent."""
    return [
        str(message["content"])
        for r in fake.requests
        if r.path == OPENAI_PATH and r.body is not None
        for message in r.body["messages"]
    ]


@pytest.mark.parametrize(
    ("directive", "code"),
    [("mod:flag", "content_blocked"), ("mod:fail", "moderation_unavailable")],
)
def test_a_blocked_message_never_reaches_the_model_as_context_later(
    service: Service, fake_provider: FakeProvider, directive: str, code: str
) -> None:
    """SPEC: a flagged message never reaches the model, not even as context.

    Each turn moderates only its own message; the blocked one stays in the
    conversation (its owner may read it back) but is no context for later
    turns, which see only answered exchanges.
    """
    client = ChatClient(service.url)
    opening, _ = client.answer("hello there")
    blocked = f"{directive} the forbidden text"
    _, events = client.answer(blocked, conversation_id=opening.conversation_id)
    assert data_of(events, "error")[0]["code"] == code

    _, events = client.answer(
        "Please answer my previous message.",
        conversation_id=opening.conversation_id,
    )

    assert text_of(events)
    sent = model_inputs(fake_provider)
    assert "Please answer my previous message." in sent
    assert "hello there" in sent  # answered exchanges stay context
    assert not any("forbidden" in text for text in sent), sent
    kept = requests.get(
        f"{service.url}/api/conversations/{opening.conversation_id}",
        headers={"X-Chat-Token": client.token},
        timeout=10,
    ).json()["messages"]
    assert blocked in [m["content"] for m in kept]


def test_a_blocked_message_sent_while_an_answer_streams_stays_out_too(
    service: Service, fake_provider: FakeProvider
) -> None:
    """The earlier turn's answer lands after the blocked message; it still
    answers its own question, never the blocked one."""
    client = ChatClient(service.url)
    opening = client.start("fake: delay_ms=300 | one two three four")
    blocked = client.start(
        "mod:flag the forbidden text", conversation_id=opening.conversation_id
    )
    assert data_of(client.events(blocked), "error")[0]["code"] == "content_blocked"
    assert data_of(client.events(opening), "done") == [{"finish_reason": "stop"}]

    client.answer("And now?", conversation_id=opening.conversation_id)

    sent = model_inputs(fake_provider)
    assert "And now?" in sent
    assert not any("forbidden" in text for text in sent), sent
