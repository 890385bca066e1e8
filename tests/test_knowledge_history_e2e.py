"""An answer's sources live on in its conversation: crawled site, gunicorn, history."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from chatapp.knowledge.sqlite_index import SqliteIndex
from chatapp.store.conversations import MemoryHistory
from chatapp.store.conversations import StoredMessage
from chatapp.turns.visitor import transcript
from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import ServiceFactory
from tests.conftest import data_of
from tests.conftest import wait_for
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.site import ShopSite
from tests.test_knowledge_e2e import knowledge_settings
from tests.test_openapi_e2e import DOCUMENT
from tests.test_openapi_e2e import Contract

SHIPPING = "/shipping.html"
ANSWER = "Express delivery arrives the next working day [1]."


@pytest.fixture
def site() -> Iterator[ShopSite]:
    with ShopSite() as running:
        yield running


def history(client: ChatClient, conversation_id: str) -> requests.Response:
    return client.http.get(
        f"{client.base_url}/api/conversations/{conversation_id}",
        headers={"X-Chat-Token": client.token},
        timeout=10,
    )


@pytest.mark.e2e
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_an_answers_sources_come_back_with_its_conversation(
    store: str,
    tmp_path: Path,
    site: ShopSite,
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    request: pytest.FixtureRequest,
) -> None:
    extra: dict[str, Any] = {"CHATAPP_KNOWLEDGE_SOURCES": site.sitemap}
    if store == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        redis_server.flush()
        extra["CHATAPP_REDIS_URL"] = redis_server.url
    service = service_factory(**knowledge_settings(fake_provider, tmp_path, **extra))
    index = SqliteIndex(tmp_path / "knowledge.sqlite3")
    try:
        wait_for(
            lambda: (
                (tmp_path / "knowledge.sqlite3").exists()
                and index.document(site.url(SHIPPING)) is not None
            ),
            60,
            "the start-up crawl of the shop's site",
        )
    finally:
        index.close()
    client = ChatClient(service.url)
    question = Behaviour(text=ANSWER, delay_ms=1).as_directive()
    turn, events = client.answer(question)
    [sent] = data_of(events, "sources")
    assert sent["sources"] and sent["sources"][0]["url"] == site.url(SHIPPING)

    response = history(client, turn.conversation_id)
    assert response.status_code == 200
    Contract(json.loads(DOCUMENT.read_text(encoding="utf-8"))).check(
        response, "GET", "/api/conversations/{conversation_id}"
    )
    asked, answered = response.json()["messages"]
    assert "sources" not in asked
    assert answered["content"] == ANSWER
    assert answered["sources"] == sent["sources"]

    # A follow-up without knowledge of its own keeps the first answer's.
    follow = Behaviour(text="Nothing to cite.", delay_ms=1).as_directive()
    client.answer(follow, conversation_id=turn.conversation_id)
    messages = history(client, turn.conversation_id).json()["messages"]
    assert messages[1]["sources"] == sent["sources"]

    # The transcript to keep lists them under the answer, as the page does.
    kept = client.http.get(
        f"{client.base_url}/api/conversations/{turn.conversation_id}",
        params={"format": "markdown"},
        headers={"X-Chat-Token": client.token},
        timeout=10,
    )
    assert kept.status_code == 200
    first = sent["sources"][0]
    listed = f"{ANSWER}\n\nSources:\n\n1. [{first['title']}](<{first['url']}>)\n"
    assert listed in kept.text
    cited = [m for m in messages if m.get("sources")]
    assert kept.text.count("\nSources:\n") == len(cited)


def test_memory_history_keeps_an_answers_sources() -> None:
    store = MemoryHistory(60)
    sources = ({"n": 1, "title": "Shipping", "url": "https://shop.test/s"},)
    store.create("c1", "owner", StoredMessage("user", "q", 1.0, "t1"))
    store.append("c1", StoredMessage("assistant", "a [1]", 2.0, "t1", sources))
    assert store.messages("c1")[1].sources == sources


def test_a_transcript_lists_each_answers_sources_under_it() -> None:
    sources = (
        {"n": 1, "title": "Shipping & *returns* [EU]", "url": "https://s.test/a_(b)"},
        {"n": 2, "title": "Notes", "url": "notes.md"},  # added from a file
        {"n": 3, "title": "", "url": "https://s.test/bare"},
        {"n": "4", "title": "Malformed", "url": "https://s.test/x"},
    )
    text = transcript(
        "c1",
        [
            StoredMessage("user", "Where do you ship?", 0.0, "t1"),
            StoredMessage("assistant", "Across the EU [1][2].", 60.0, "t1", sources),
            StoredMessage("user", "Thanks", 120.0, "t2"),
            StoredMessage("assistant", "You are welcome.", 180.0, "t2"),
        ],
    )
    assert text == (
        "# Conversation c1\n\n"
        "## You — 1970-01-01 00:00 UTC\n\nWhere do you ship?\n\n"
        "## Assistant — 1970-01-01 00:01 UTC\n\nAcross the EU [1][2].\n\n"
        "Sources:\n\n"
        "1. [Shipping & \\*returns\\* \\[EU\\]](<https://s.test/a_(b)>)\n"
        "2. Notes\n"
        "3. [https://s.test/bare](<https://s.test/bare>)\n\n"
        "## You — 1970-01-01 00:02 UTC\n\nThanks\n\n"
        "## Assistant — 1970-01-01 00:03 UTC\n\nYou are welcome.\n"
    )
