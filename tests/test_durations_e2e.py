"""Short, fractional durations work end to end: they are how expiry is exercised."""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import ChatClient
from tests.conftest import ServiceFactory
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def test_a_fractional_stream_ttl_expires_a_finished_turn(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(CHATAPP_STREAM_TTL="1.5")
    client = ChatClient(service.url)
    turn, events = client.answer("hello")
    assert events[-1].event == "done"
    finished = time.monotonic()
    url = service.url + turn.stream_url + "&last_event_id=0"
    # Replayable right after the end, gone once the short TTL has run out.
    assert requests.get(url, timeout=10).status_code == 200
    wait_for(lambda: requests.get(url, timeout=10).status_code == 404, 30, "expiry")
    # The TTL starts when the turn ends, a moment before `done` reached us.
    assert time.monotonic() - finished >= 1.0


def test_a_fractional_token_ttl_expires_the_page_token(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(CHATAPP_TOKEN_TTL="0.5")
    client = ChatClient(service.url)

    def expired() -> bool:
        response = client.post(message="hello")
        return response.status_code == 403 and (
            response.json()["error"]["code"] == "token_expired"
        )

    # Token timestamps have one-second steps, so this takes one to two seconds.
    wait_for(expired, 10, "the page token to expire", every=0.2)
