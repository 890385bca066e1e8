"""An answer never holds more text than its bound, whatever the provider sends."""

from __future__ import annotations

import pytest

from chatapp.turns.produce import MIN_ANSWER_CHARS
from chatapp.turns.produce import answer_char_limit
from tests.conftest import ChatClient
from tests.conftest import ServiceFactory
from tests.conftest import anthropic_settings
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider


def test_the_limit_follows_max_tokens_with_a_floor() -> None:
    assert answer_char_limit(10) == MIN_ANSWER_CHARS
    assert answer_char_limit(100_000) > 100_000 * 4


@pytest.mark.e2e
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_runaway_provider_is_cut_off_end_to_end(
    service_factory: ServiceFactory, fake_provider: FakeProvider, provider: str
) -> None:
    settings = openai_settings if provider == "openai" else anthropic_settings
    service = service_factory(**settings(fake_provider, CHATAPP_MAX_OUTPUT_TOKENS=10))
    client = ChatClient(service.url)
    fake_provider.enqueue(Behaviour(text="x" * (4 * MIN_ANSWER_CHARS), pieces=4096))
    turn, events = client.answer("hello")
    assert len(text_of(events)) == MIN_ANSWER_CHARS
    assert data_of(events, "done") == [{"finish_reason": "length"}]
    assert fake_provider.wait_all_closed(10)
    history = client.http.get(
        f"{service.url}/api/conversations/{turn.conversation_id}",
        headers={"X-Chat-Token": client.token},
        timeout=10,
    ).json()
    assert len(history["messages"][-1]["content"]) == MIN_ANSWER_CHARS
    client.http.close()
