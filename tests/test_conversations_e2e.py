"""Conversations through real gunicorn: their lifetime, and long ones on Redis.

SPEC: a conversation is kept CHATAPP_HISTORY_TTL seconds after its last
turn, counted from the end of that turn; later turns send the earlier ones
as context, the newest 200 messages of it kept.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import requests

from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

# A database of its own, so flushing it touches no other test's keys.
DB = 5
MAX_MESSAGES = 200
# Three pieces 800 ms apart: an answer that takes longer than the TTL.
SLOW = "fake: delay_ms=800 | one two three four five six"


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.command("-n", str(DB), "FLUSHDB")
    return f"redis://127.0.0.1:{redis_server.port}/{DB}"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "memory":
        return {}
    url: str = request.getfixturevalue("redis_url")
    return {"CHATAPP_REDIS_URL": url}


def read_back(client: ChatClient, conversation_id: str) -> requests.Response:
    return client.http.get(
        f"{client.base_url}/api/conversations/{conversation_id}",
        headers={"X-Chat-Token": client.token},
        timeout=10,
    )


def test_an_answer_slower_than_the_ttl_keeps_its_conversation(
    service_factory: ServiceFactory, fake_provider: FakeProvider, store: dict[str, str]
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_HISTORY_TTL="1", **store)
    )
    client = ChatClient(service.url)
    started = time.monotonic()
    turn, events = client.answer(SLOW)
    assert time.monotonic() - started > 1.5  # the answer outlived the TTL
    assert data_of(events, "done") == [{"finish_reason": "stop"}]

    kept = read_back(client, turn.conversation_id)
    follow_up = client.post(message="thanks", conversation_id=turn.conversation_id)

    assert kept.status_code == 200, kept.text
    assert [m["role"] for m in kept.json()["messages"]] == ["user", "assistant"]
    assert kept.json()["messages"][1]["content"] == text_of(events)
    assert follow_up.status_code == 201, follow_up.text


def test_the_ttl_counts_from_the_end_of_the_last_turn(
    service_factory: ServiceFactory, fake_provider: FakeProvider, store: dict[str, str]
) -> None:
    """Held while a turn runs, kept TTL after it ends; answered or not."""
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_HISTORY_TTL="1", **store)
    )
    client = ChatClient(service.url)
    answered, _ = client.answer("fake: | quick")
    failed, events = client.answer("fake: status=500 | never")
    assert data_of(events, "error")
    time.sleep(0.3)
    assert read_back(client, answered.conversation_id).status_code == 200
    assert read_back(client, failed.conversation_id).status_code == 200

    time.sleep(2.5)  # past the TTL (Redis counts it in whole seconds)

    assert read_back(client, answered.conversation_id).status_code == 404
    assert read_back(client, failed.conversation_id).status_code == 404
    assert "Traceback" not in service.log()


# -- long conversations on Redis ---------------------------------------------------


@pytest.fixture
def long_conversation(
    service_factory: ServiceFactory, redis_url: str
) -> Iterator[tuple[Service, ChatClient, str, redis.Redis]]:
    """A conversation at 200 messages, on two workers sharing one Redis."""
    service = service_factory(CHATAPP_REDIS_URL=redis_url, CHATAPP_WORKERS="2")
    client = ChatClient(service.url)
    turn, _ = client.answer("hello")
    store = redis.Redis.from_url(redis_url)
    key = f"chatapp:c:{{{turn.conversation_id}}}"
    # Filled in directly: a hundred turns through the API would take long.
    filler = [
        json.dumps({"role": role, "content": f"earlier {n}", "at": time.time()})
        for n in range(MAX_MESSAGES - 2)
        for role in ["user" if n % 2 == 0 else "assistant"]
    ]
    store.rpush(key, *filler)
    assert store.llen(key) == MAX_MESSAGES + 1  # the owner, then 200 messages
    yield service, client, turn.conversation_id, store
    store.close()


@pytest.mark.redis
def test_a_long_conversation_is_trimmed_without_a_moment_lacking_its_owner(
    long_conversation: tuple[Service, ChatClient, str, redis.Redis],
) -> None:
    """Each new message trims the oldest; a reader never sees the list
    without its owner (the old trim took two round trips: 500 KeyError)."""
    service, client, conversation_id, store = long_conversation
    statuses: list[int] = []
    stop = threading.Event()

    def read_all_the_time() -> None:
        reader = ChatClient(service.url, token=client.token)
        while not stop.is_set():
            statuses.append(read_back(reader, conversation_id).status_code)
        reader.http.close()

    readers = [threading.Thread(target=read_all_the_time) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for n in range(30):
            turn = client.start(f"message {n}", conversation_id=conversation_id)
            assert data_of(client.events(turn), "done") == [{"finish_reason": "stop"}]
    finally:
        stop.set()
        for reader in readers:
            reader.join(30)

    assert len(statuses) > 100
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    key = f"chatapp:c:{{{conversation_id}}}"
    assert json.loads(store.lindex(key, 0) or b"{}").get("owner")
    assert store.llen(key) == MAX_MESSAGES + 1
    messages = read_back(client, conversation_id).json()["messages"]
    assert messages[-1]["role"] == "assistant"
    assert messages[-2]["content"] == "message 29"
    assert "Traceback" not in service.log()
