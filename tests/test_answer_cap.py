"""An answer never holds more text than its bound, whatever the provider sends."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from chatapp.providers.base import Chunk
from chatapp.providers.capped import MIN_ANSWER_CHARS
from chatapp.providers.capped import answer_char_limit
from chatapp.providers.capped import cap_stream
from tests.conftest import ChatClient
from tests.conftest import ServiceFactory
from tests.conftest import anthropic_settings
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider


class Upstream:
    """A provider stream that records whether it was closed."""

    def __init__(self, batches: list[list[Chunk]]) -> None:
        self.batches = batches
        self.closed = False

    def stream(self) -> Generator[list[Chunk]]:
        try:
            yield from self.batches
        finally:
            self.closed = True


def test_the_limit_follows_max_tokens_with_a_floor() -> None:
    assert answer_char_limit(10) == MIN_ANSWER_CHARS
    assert answer_char_limit(100_000) > 100_000 * 4


def test_an_answer_within_the_limit_passes_untouched() -> None:
    batches = [[Chunk(text="ab")], [Chunk(text="cd"), Chunk(finish_reason="stop")]]
    upstream = Upstream(batches)
    assert list(cap_stream(upstream.stream(), 4)) == batches
    assert upstream.closed


def test_a_runaway_answer_is_cut_at_the_limit_and_closed() -> None:
    upstream = Upstream([[Chunk(text="abc")], [Chunk(text="defg")], [Chunk(text="h")]])
    out = list(cap_stream(upstream.stream(), 5))
    assert out == [
        [Chunk(text="abc")],
        [Chunk(text="de"), Chunk(finish_reason="length")],
    ]
    assert upstream.closed


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
