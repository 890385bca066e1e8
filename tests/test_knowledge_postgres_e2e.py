"""Two hosts on one Postgres index: what one was sent, the other answers from."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ChatClient
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import FakeProvider
from tests.test_knowledge_e2e import ADMIN
from tests.test_knowledge_e2e import SHIPPING_TEXT
from tests.test_knowledge_e2e import SITE
from tests.test_knowledge_e2e import WP_SECRET
from tests.test_knowledge_e2e import Owner
from tests.test_knowledge_e2e import sources_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def database(postgres_server: Any) -> Iterator[str]:
    """A fresh database of the test's own on the session's Postgres."""
    name = f"kb_{secrets.token_hex(6)}"
    postgres_server.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    postgres_server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def host(factory: ServiceFactory, fake: FakeProvider, url: str) -> Any:
    return factory(
        **openai_settings(
            fake,
            CHATAPP_KNOWLEDGE="on",
            CHATAPP_KNOWLEDGE_URL=url,
            CHATAPP_ADMIN_TOKEN=ADMIN,
            CHATAPP_WP_SHARED_SECRET=WP_SECRET,
        )
    )


def test_two_hosts_on_one_postgres_share_what_one_was_sent(
    service_factory: ServiceFactory, fake_provider: FakeProvider, database: str
) -> None:
    first = host(service_factory, fake_provider, database)
    second = host(service_factory, fake_provider, database)
    page = f"{SITE}/shipping"
    assert Owner(first.url).put(page, SHIPPING_TEXT, title="Shipping").ok
    assert [d["url"] for d in Owner(second.url).list().json()["documents"]] == [page]
    _, events = ChatClient(second.url).answer("When do parcels leave the warehouse?")
    assert sources_of(events) == [{"n": 1, "title": "Shipping", "url": page}]
    assert Owner(second.url).delete(page).status_code == 204
    _, events = ChatClient(first.url).answer("When do parcels leave the warehouse?")
    assert sources_of(events) == []


def test_postgres_away_never_fails_a_turn(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    from tests.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        chat = host(service_factory, fake_provider, server.url)
        Owner(chat.url).put(f"{SITE}/shipping", SHIPPING_TEXT, title="Shipping")
        client = ChatClient(chat.url)
        _, events = client.answer("When do parcels leave the warehouse?")
        assert len(sources_of(events)) == 1
    finally:
        server.stop()
    _, events = client.answer("When do parcels leave the warehouse?")
    assert sources_of(events) == []
    assert events[-1].event == "done"
    refused = Owner(chat.url).list()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "over_capacity"
