"""Models as they ship today, end to end through gunicorn and the fake provider.

Reasoning models and their parameters, thinking streams (recorded bodies),
long silences before the first word, and retries or a fallback before it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from chatapp.upstream.sse_decoder import SSEDecoder
from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import ServiceFactory
from tests.conftest import anthropic_settings
from tests.conftest import data_of
from tests.conftest import free_port
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.fake_provider import ANTHROPIC_THINKING_STREAM
from tests.fake_provider import OPENAI_REASONING_STREAM
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.fake_provider import default_fixtures_dir

pytestmark = pytest.mark.e2e

FIXTURES = default_fixtures_dir()


def payloads(name: str) -> list[dict[str, Any]]:
    events = SSEDecoder().feed((FIXTURES / name).read_bytes())
    return [json.loads(e.data) for e in events if e.data != "[DONE]"]


def openai_parts(name: str) -> tuple[str, str]:
    """Return the answer and the reasoning a recorded OpenAI-style body holds."""
    text, thought = [], []
    for payload in payloads(name):
        for choice in payload.get("choices", []):
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            thought.append(delta.get("reasoning_content") or "")
    return "".join(text), "".join(thought)


def anthropic_parts(name: str) -> tuple[str, str]:
    text, thought = [], []
    for payload in payloads(name):
        delta = payload.get("delta") or {}
        if payload.get("type") == "content_block_delta":
            text.append(delta.get("text", ""))
            thought.append(delta.get("thinking", ""))
    return "".join(text), "".join(thought)


def names(events: list[Any]) -> list[str]:
    return [e.event for e in events]


def assert_well_formed(events: list[Any]) -> None:
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert names(events)[0] == "start" and names(events).count("start") == 1
    assert names(events).count("done") == 1 and names(events)[-1] == "done"


def statuses(events: list[Any]) -> list[dict[str, Any]]:
    return data_of(events, "status")


# -- reasoning models answer, whatever the settings -----------------------------


@pytest.mark.parametrize("model", ["gpt-5-mini", "o4-mini"])
def test_openai_reasoning_models_answer_with_a_temperature_set(
    service_factory: ServiceFactory, fake_provider: FakeProvider, model: str
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_MODEL=model,
            CHATAPP_TEMPERATURE="0.7",
            CHATAPP_REASONING_EFFORT="low",
        )
    )
    _, events = ChatClient(service.url).answer("Hello")
    assert_well_formed(events)
    assert data_of(events, "done") == [{"finish_reason": "stop"}]
    assert text_of(events)
    sent = fake_provider.requests[-1].body
    assert sent is not None
    assert sent["max_completion_tokens"] == 1024
    assert "max_tokens" not in sent and "temperature" not in sent
    assert sent["reasoning_effort"] == "low"
    assert len(fake_provider.requests) == 1


def test_a_parameter_refused_by_name_is_asked_once_more_in_the_other_form(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_TEMPERATURE="0.5")
    )
    fake_provider.enqueue(Behaviour(refuse="max_tokens"))
    _, events = ChatClient(service.url).answer("Hello")
    assert data_of(events, "done") == [{"finish_reason": "stop"}]
    first, second = (r.body for r in fake_provider.requests)
    assert first is not None and second is not None
    assert first["max_tokens"] == 1024 and first["temperature"] == 0.5
    assert second["max_completion_tokens"] == 1024
    assert "max_tokens" not in second and "temperature" not in second
    assert "retrying" not in [s["state"] for s in statuses(events)]
    assert "asking again without it" in service.log()


# -- thinking is visible, never mixed into the answer ---------------------------


def test_reasoning_content_is_never_answer_text(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider, CHATAPP_MODEL="deepseek-reasoner", CHATAPP_SHOW_REASONING="1"
        )
    )
    answer, thought = openai_parts(OPENAI_REASONING_STREAM)
    message = Behaviour(fixture=OPENAI_REASONING_STREAM).as_directive()
    _, events = ChatClient(service.url).answer(message)
    assert_well_formed(events)
    assert text_of(events) == answer
    assert "".join(r["text"] for r in data_of(events, "reasoning")) == thought
    assert statuses(events) == [{"state": "thinking"}]
    kinds = names(events)
    assert kinds.index("status") < kinds.index("reasoning") < kinds.index("delta")
    assert "delta" not in kinds[: kinds.index("reasoning")]
    # Reasoning tokens are in the provider's output count (205 of 219).
    assert data_of(events, "usage") == [{"input_tokens": 18, "output_tokens": 219}]


def test_anthropic_thinking_blocks_are_never_answer_text(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **anthropic_settings(
            fake_provider,
            CHATAPP_SHOW_REASONING="1",
            CHATAPP_REASONING_EFFORT="medium",
            CHATAPP_MAX_OUTPUT_TOKENS="4000",
            CHATAPP_TEMPERATURE="0.2",
        )
    )
    answer, thought = anthropic_parts(ANTHROPIC_THINKING_STREAM)
    message = Behaviour(fixture=ANTHROPIC_THINKING_STREAM).as_directive()
    _, events = ChatClient(service.url).answer(message)
    assert_well_formed(events)
    assert text_of(events) == answer == "925 ÷ 5 = 185"
    assert "".join(r["text"] for r in data_of(events, "reasoning")) == thought
    assert statuses(events) == [{"state": "thinking"}]
    sent = fake_provider.requests[-1].body
    assert sent is not None
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert "temperature" not in sent


def test_without_show_reasoning_only_the_thinking_status_is_relayed(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(**openai_settings(fake_provider))
    answer, _ = openai_parts(OPENAI_REASONING_STREAM)
    message = Behaviour(fixture=OPENAI_REASONING_STREAM).as_directive()
    _, events = ChatClient(service.url).answer(message)
    assert text_of(events) == answer
    assert data_of(events, "reasoning") == []
    assert statuses(events) == [{"state": "thinking"}]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_resume_and_polling_replay_status_and_reasoning_exactly(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    request: pytest.FixtureRequest,
    store: str,
) -> None:
    shared = {}
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        shared = {"CHATAPP_REDIS_URL": server.url, "CHATAPP_WORKERS": "2"}
    service = service_factory(
        **anthropic_settings(fake_provider, CHATAPP_SHOW_REASONING="1", **shared)
    )
    client = ChatClient(service.url)
    message = Behaviour(fixture=ANTHROPIC_THINKING_STREAM).as_directive()
    turn, events = client.answer(message)
    resumed = client.events(turn, last_event_id=1)
    seen = [(e.id, e.event, e.data) for e in events[1:]]
    assert [(e.id, e.event, e.data) for e in resumed] == seen
    polled = client.http.get(
        service.url + turn.stream_url,
        params={"poll": "1", "last_event_id": "1"},
        timeout=10,
    ).json()
    assert [(str(e["id"]), e["event"], e["data"]) for e in polled["events"]] == seen
    assert {"status", "reasoning"} <= {e.event for e in resumed}


# -- silences: thinking is not dead ---------------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_long_silence_before_the_first_word_completes(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    request: pytest.FixtureRequest,
    store: str,
) -> None:
    shared = {}
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        shared = {"CHATAPP_REDIS_URL": server.url}
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_UPSTREAM_IDLE_TIMEOUT="2", **shared)
    )
    message = Behaviour(ttft_ms=6000, text="Here it is.").as_directive()
    _, events = ChatClient(service.url).answer(message)
    assert_well_formed(events)
    assert text_of(events) == "Here it is."
    assert data_of(events, "done") == [{"finish_reason": "stop"}]
    # Said once, after about a second of silence, before the first word.
    assert statuses(events) == [{"state": "thinking"}]
    assert names(events).index("status") < names(events).index("delta")


def test_keep_alives_reach_the_browser_during_a_silence(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_HEARTBEAT_SECONDS="0.5")
    )
    client = ChatClient(service.url)
    turn = client.start(Behaviour(ttft_ms=2500, text="Late.").as_directive())
    response = client.open_stream(turn)
    body = b""
    try:
        for data in response.raw.stream(1024, decode_content=False):
            body += data
            if b"event: done" in body:
                break
    finally:
        response.close()
    silent = body[: body.index(b"event: delta")]
    assert silent.count(b": keep-alive") >= 2


def test_provider_keep_alives_count_as_life_after_the_first_word(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_UPSTREAM_IDLE_TIMEOUT="1")
    )
    # 1.2 s between events, a keep-alive comment half way: never 1 s silent.
    message = Behaviour(
        text="abcdefgh", pieces=2, comments=True, delay_ms=600
    ).as_directive()
    _, events = ChatClient(service.url).answer(message)
    assert text_of(events) == "abcdefgh"
    assert data_of(events, "done") == [{"finish_reason": "stop"}]


def test_first_token_timeout_ends_a_dead_provider(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_UPSTREAM_FIRST_TOKEN_TIMEOUT="3",
            CHATAPP_UPSTREAM_IDLE_TIMEOUT="1",
            CHATAPP_UPSTREAM_RETRIES="2",
        )
    )
    client = ChatClient(service.url)
    began = time.monotonic()
    _, events = client.answer(Behaviour(stall_after=0).as_directive())
    took = time.monotonic() - began
    print(f"\nfirst-token timeout 3 s: the turn ended after {took:.2f} s")
    assert data_of(events, "error")[0]["code"] == "provider_timeout"
    assert data_of(events, "done") == [{"finish_reason": "error"}]
    # A deadline that ran out is not asked again.
    assert len(fake_provider.requests) == 1
    assert fake_provider.wait_all_closed(5)


# -- retries and fallback, only before the first word ---------------------------


def test_two_503s_then_success_give_one_clean_answer(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider, CHATAPP_MODEL="m-1", CHATAPP_UPSTREAM_RETRIES="2"
        )
    )
    fake_provider.fail_next(2, 503)
    _, events = ChatClient(service.url).answer("Hello")
    assert_well_formed(events)
    retrying = [s for s in statuses(events) if s["state"] == "retrying"]
    assert retrying == [
        {"state": "retrying", "attempt": 2, "provider": "openai", "model": "m-1"},
        {"state": "retrying", "attempt": 3, "provider": "openai", "model": "m-1"},
    ]
    assert data_of(events, "error") == []
    assert data_of(events, "done") == [{"finish_reason": "stop"}]
    assert len(fake_provider.requests) == 3
    metrics = requests.get(service.url + "/metrics", timeout=5).text
    assert (
        'chatapp_upstream_retries_total{model="m-1",provider="openai",reason="5xx"} 2.0'
        in metrics
    )


def test_retry_after_and_an_overloaded_event_are_retried(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **anthropic_settings(fake_provider, CHATAPP_UPSTREAM_RETRIES="2")
    )
    fake_provider.fail_next(1, 529, retry_after=1)
    fake_provider.enqueue(Behaviour(overloaded=True))
    answer, _ = anthropic_parts("anthropic-messages-stream.txt")
    _, events = ChatClient(service.url).answer("Hello")
    assert text_of(events) == answer
    assert [s["attempt"] for s in statuses(events) if s["state"] == "retrying"] == [
        2,
        3,
    ]
    assert len(fake_provider.requests) == 3


def test_an_openai_error_chunk_before_any_text_is_retried(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_UPSTREAM_RETRIES="1")
    )
    fake_provider.enqueue(Behaviour(overloaded=True))
    _, events = ChatClient(service.url).answer("fake: | asked again")
    assert text_of(events) == "asked again"
    assert data_of(events, "error") == []
    retrying = [s for s in statuses(events) if s["state"] == "retrying"]
    assert [s["attempt"] for s in retrying] == [2]
    assert len(fake_provider.requests) == 2


def test_a_primary_that_is_down_hands_over_to_the_fallback_model(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_PROVIDER_BASE_URL=down,
            CHATAPP_MODEL="gpt-5-mini",
            CHATAPP_UPSTREAM_RETRIES="1",
            CHATAPP_FALLBACK_MODEL="claude-haiku-4-5",
            CHATAPP_FALLBACK_PROVIDER="anthropic",
            CHATAPP_FALLBACK_BASE_URL=fake_provider.anthropic_base_url,
            ANTHROPIC_API_KEY="test-anthropic-key-not-secret",
        )
    )
    answer, _ = anthropic_parts("anthropic-messages-stream.txt")
    _, events = ChatClient(service.url).answer("Hello")
    assert_well_formed(events)
    assert data_of(events, "start")[0]["model"] == "gpt-5-mini"
    assert [s for s in statuses(events) if s["state"] == "retrying"] == [
        {
            "state": "retrying",
            "attempt": 2,
            "provider": "openai",
            "model": "gpt-5-mini",
        },
        {
            "state": "retrying",
            "attempt": 3,
            "provider": "anthropic",
            "model": "claude-haiku-4-5",
        },
    ]
    assert text_of(events) == answer
    (asked,) = fake_provider.requests
    assert asked.body is not None and asked.body["model"] == "claude-haiku-4-5"
    metrics = requests.get(service.url + "/metrics", timeout=5).text
    assert (
        'chatapp_upstream_fallbacks_total{model="gpt-5-mini",provider="openai",'
        'reason="connect"} 1.0' in metrics
    )


def test_a_drop_after_text_is_never_asked_again(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_UPSTREAM_RETRIES="2")
    )
    _, events = ChatClient(service.url).answer(
        Behaviour(text="One two three four", drop_after=3).as_directive()
    )
    assert text_of(events)
    assert data_of(events, "error")[0]["code"] == "provider_unavailable"
    assert data_of(events, "done") == [{"finish_reason": "error"}]
    assert statuses(events) == []
    assert len(fake_provider.requests) == 1


def test_a_cancel_stops_the_wait_before_a_retry(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_UPSTREAM_RETRIES="2")
    )
    fake_provider.fail_next(1, 503, retry_after=10)
    client = ChatClient(service.url)
    turn = client.start("Hello")
    seen = client.events(turn, limit=2)
    assert seen[1].event == "status"
    began = time.monotonic()
    assert client.cancel(turn).status_code == 202
    events = client.events(turn, last_event_id=2)
    print(
        f"\ncancel during a 10 s Retry-After: done in {time.monotonic() - began:.2f} s"
    )
    assert data_of(events, "done") == [{"finish_reason": "cancelled"}]
    assert len(fake_provider.requests) == 1
