"""One request per turn: POST /api/chat with Accept: text/event-stream.

Through real gunicorn and the fake provider (a real HTTP server): the POST
answers 200 with the turn's events, resumes through stream_url after a drop,
replays on an idempotent retry without a second provider call, and still
refuses in JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests

from chatapp.upstream.sse_decoder import ServerSentEvent
from chatapp.upstream.sse_decoder import SSEDecoder
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import _shared
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.conftest import wait_for
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.test_metrics_e2e import scrape

pytestmark = pytest.mark.e2e

SHOP = "http://shop.example"
EVENTS = "text/event-stream"
DROPPED = 'chatapp_disconnects_total{cause="client"}'
ANSWER = "One request per turn saves a round trip before the first word."


@pytest.fixture
def service(module_services: ServiceFactory, fake_provider: FakeProvider) -> Service:
    settings = openai_settings(
        fake_provider, CHATAPP_API_ORIGINS=SHOP, CHATAPP_RATE_LIMITS="50/minute"
    )
    return _shared(module_services, settings)


def post_events(
    client: ChatClient, message: str, headers: dict[str, str] | None = None
) -> requests.Response:
    """POST a turn asking for its event stream; the body is read by the caller."""
    return client.http.post(
        client.base_url + "/api/chat",
        json={"token": client.token, "message": message},
        headers={"Accept": EVENTS, **(headers or {})},
        stream=True,
        timeout=30,
    )


def read_events(
    response: requests.Response, limit: int | None = None, *, close: bool = True
) -> list[ServerSentEvent]:
    """Read events until `done` (or `limit` deltas), then close the connection."""
    decoder = SSEDecoder()
    out: list[ServerSentEvent] = []
    try:
        for data in response.raw.stream(256, decode_content=False):
            for event in decoder.feed(data):
                out.append(event)
                deltas = sum(e.event == "delta" for e in out)
                if event.event == "done" or (limit and deltas >= limit):
                    return out
    finally:
        if close:
            response.close()
    return out


def slow(text: str = ANSWER, **extra: Any) -> str:
    """A message that makes the fake provider stream `text` in slow pieces."""
    return Behaviour(text=text, pieces=12, delay_ms=60, **extra).as_directive()


def ids_of(events: list[ServerSentEvent]) -> list[int]:
    return [int(e.id) for e in events if e.id]


def test_a_streamed_post_answers_200_with_the_turns_events(
    service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(service.url)
    response = post_events(
        client, Behaviour(text=ANSWER).as_directive(), {"Origin": SHOP}
    )

    assert response.status_code == 200
    headers = response.headers
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache, no-transform"
    assert headers["X-Accel-Buffering"] == "no"
    assert headers["Content-Encoding"] == "identity"
    assert headers["X-Request-ID"]
    assert headers["RateLimit-Policy"] == '"50 per 1 minute";q=50;w=60'
    assert re.match(r'^"50 per 1 minute";r=[0-9]+;t=[0-9]+$', headers["RateLimit"])
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert "Origin" in headers["Vary"]

    events = read_events(response)
    names = [e.event for e in events]
    assert names[0] == "start" and names[-1] == "done"
    assert "delta" in names
    assert ids_of(events) == list(range(1, len(events) + 1))
    start = json.loads(events[0].data)
    assert start["stream_url"].startswith(f"/api/chat/{start['id']}/events?t=")
    assert start["cancel_url"].startswith(f"/api/chat/{start['id']}/cancel?t=")
    assert start["conversation_id"] and start["model"]
    assert text_of(events) == ANSWER
    assert data_of(events, "done") == [{"finish_reason": "stop"}]
    assert len(fake_provider.requests) == 1


def test_the_stream_url_of_a_streamed_post_serves_the_same_events(
    service: Service,
) -> None:
    client = ChatClient(service.url)
    streamed = read_events(post_events(client, Behaviour(text=ANSWER).as_directive()))
    start = json.loads(streamed[0].data)

    response = client.http.get(client.base_url + start["stream_url"], timeout=30)

    again = SSEDecoder().feed(response.content)
    assert [(e.id, e.event) for e in again] == [(e.id, e.event) for e in streamed]
    assert "stream_url" not in json.loads(again[0].data)  # only on the POST
    assert text_of(again) == ANSWER


def test_a_dropped_streamed_post_resumes_through_stream_url(
    service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(service.url)
    first = read_events(post_events(client, slow()), limit=3)  # then the drop
    start = json.loads(first[0].data)
    assert first[-1].event == "delta"

    response = client.http.get(
        client.base_url + start["stream_url"],
        headers={"Last-Event-ID": first[-1].id},
        timeout=30,
    )

    assert response.status_code == 200
    rest = SSEDecoder().feed(response.content)
    assert rest[0].event != "start" and rest[-1].event == "done"
    assert ids_of(first + rest) == list(range(1, len(first) + len(rest) + 1))
    assert text_of(first + rest) == ANSWER
    assert len(fake_provider.requests) == 1


def test_a_streamed_retry_with_the_same_key_replays_the_same_turn(
    service: Service, fake_provider: FakeProvider
) -> None:
    client = ChatClient(service.url)
    key = {"Idempotency-Key": "retry-of-one-turn-0001"}
    cut = read_events(post_events(client, slow(), key), limit=2)

    replayed = read_events(post_events(client, slow(), key))
    resumed = read_events(
        post_events(client, slow(), {**key, "Last-Event-ID": cut[-1].id})
    )

    assert json.loads(replayed[0].data)["id"] == json.loads(cut[0].data)["id"]
    assert json.loads(replayed[0].data)["stream_url"]
    assert ids_of(replayed) == list(range(1, len(replayed) + 1))
    assert text_of(replayed) == ANSWER
    assert ids_of(resumed)[0] == int(cut[-1].id) + 1
    assert text_of(cut + resumed) == ANSWER
    assert len(fake_provider.requests) == 1  # one provider call for all three


def test_a_retry_with_a_malformed_last_event_id_replays_everything(
    service: Service,
) -> None:
    client = ChatClient(service.url)
    key = {"Idempotency-Key": "retry-with-junk-id-0004"}
    events = read_events(post_events(client, "hello", key))

    again = read_events(post_events(client, "hello", {**key, "Last-Event-ID": "1x"}))

    assert [(e.id, e.event) for e in again] == [(e.id, e.event) for e in events]


def test_a_retry_after_done_was_delivered_gets_204(service: Service) -> None:
    client = ChatClient(service.url)
    key = {"Idempotency-Key": "retry-after-the-end-0002"}
    events = read_events(post_events(client, "hello", key))

    again = post_events(client, "hello", {**key, "Last-Event-ID": events[-1].id})

    assert again.status_code == 204
    assert again.content == b""


def test_a_json_retry_of_a_streamed_turn_gets_its_201_body(service: Service) -> None:
    client = ChatClient(service.url)
    key = {"Idempotency-Key": "json-retry-of-stream-0003"}
    events = read_events(post_events(client, "hello", key))

    again = client.post(message="hello", headers=key)

    assert again.status_code == 201
    start = json.loads(events[0].data)
    assert again.json()["id"] == start["id"]
    assert again.json()["stream_url"] == start["stream_url"]


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("text/event-stream", 200),
        ("text/event-stream, application/json;q=0.5", 200),
        ("application/json", 201),
        ("*/*", 201),
        ("application/json, text/event-stream", 201),  # a tie: JSON
        ("text/event-stream;q=0", 201),  # not acceptable at all
        ("text/*", 200),  # of the two, only the stream is text
        ("text/event-stream;q=nonsense", 201),  # unreadable: asks for nothing
    ],
)
def test_the_accept_header_chooses_the_answer(
    service: Service, accept: str, status: int
) -> None:
    client = ChatClient(service.url)
    response = client.post(message="hello", headers={"Accept": accept})

    assert response.status_code == status


def test_refusals_stay_json_when_the_client_asked_for_events(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_RATE_LIMITS="1/minute")
    )
    client = ChatClient(service.url)
    assert read_events(post_events(client, "hello"))[-1].event == "done"

    limited = post_events(client, "one too many")
    empty = post_events(client, "   ")
    forged = client.http.post(
        client.base_url + "/api/chat",
        json={"token": "forged", "message": "hi"},
        headers={"Accept": EVENTS},
        timeout=10,
    )

    assert limited.status_code == 429
    assert limited.headers["Content-Type"] == "application/json"
    assert limited.headers["Retry-After"]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert empty.status_code == 400
    assert empty.json()["error"]["code"] == "invalid_input"
    assert forged.status_code == 403
    assert forged.json()["error"]["code"] == "invalid_token"


def test_a_streamed_post_is_counted_as_one_reader(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(**openai_settings(fake_provider))
    client = ChatClient(service.url)
    response = post_events(client, slow())
    cut = read_events(response, limit=2, close=False)
    assert scrape(service.url)["chatapp_open_streams"] == 1
    response.close()  # the POST's reader is gone now

    wait_for(
        lambda: scrape(service.url).get(DROPPED) == 1, 10, "the dropped POST counted"
    )
    start = json.loads(cut[0].data)
    rest = client.http.get(
        client.base_url + start["stream_url"],
        headers={"Last-Event-ID": cut[-1].id},
        timeout=30,
    )
    assert SSEDecoder().feed(rest.content)[-1].event == "done"

    values = scrape(service.url)
    assert values["chatapp_open_streams"] == 0
    assert values["chatapp_resumes_total"] == 1
    assert values[DROPPED] == 1
    assert values["chatapp_turns_started_total"] == 1
