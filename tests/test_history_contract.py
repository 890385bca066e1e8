"""The conversation store's index of turns, owners and feedback: one contract,
run against the in-memory store and a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from chatapp.store.conversations import History
from chatapp.store.conversations import MemoryHistory
from chatapp.store.conversations import StoredMessage
from chatapp.store.conversations_redis import RedisHistory
from chatapp.store.redis import connect
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture(params=["memory", "redis"])
def history(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> Iterator[History]:
    if request.param == "memory":
        yield MemoryHistory(3600)
        return
    client = connect(redis_server.url, 4)
    try:
        yield RedisHistory(client, 3600, grace=60)
    finally:
        client.close()


def new(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def say(role: str, text: str) -> StoredMessage:
    return StoredMessage(role, text, 1.0)


def start(history: History, owner: str, *texts: str) -> tuple[str, list[str]]:
    """A conversation of `owner` with one turn per user text (and its answer)."""
    cid, turns = new("conv"), []
    for i, text in enumerate(texts):
        if i == 0:
            history.create(cid, owner, say("user", text))
        else:
            history.append(cid, say("user", text))
        turn = new("turn")
        history.remember_turn(cid, owner, turn)
        history.append(cid, say("assistant", f"answer to {text}"))
        turns.append(turn)
    return cid, turns


class TestHistoryIndex:
    def test_turns_and_their_conversation_are_found(self, history: History) -> None:
        owner = new("v:owner")
        cid, turns = start(history, owner, "one", "two")
        assert sorted(history.turns(cid)) == sorted(turns)
        assert [history.conversation_of(t) for t in turns] == [cid, cid]
        assert history.conversation_of(new("turn")) is None

    def test_an_owner_finds_every_conversation_and_only_theirs(
        self, history: History
    ) -> None:
        owner, other = new("v:owner"), new("v:other")
        first, _ = start(history, owner, "a")
        second, _ = start(history, owner, "b")
        theirs, _ = start(history, other, "c")
        assert sorted(history.conversations_of(owner)) == sorted([first, second])
        assert history.conversations_of(other) == [theirs]
        assert history.conversations_of(new("v:nobody")) == []

    def test_a_later_rating_replaces_the_earlier(self, history: History) -> None:
        cid, (turn,) = start(history, new("v:owner"), "rate me")
        history.set_feedback(cid, turn, '{"rating": "up"}')
        history.set_feedback(cid, turn, '{"rating": "down"}')
        assert history.feedback(cid) == {turn: '{"rating": "down"}'}

    def test_drop_last_exchange_keeps_what_came_before(self, history: History) -> None:
        cid, _ = start(history, new("v:owner"), "first", "second")
        history.drop_last_exchange(cid)
        assert [m.content for m in history.messages(cid)] == [
            "first",
            "answer to first",
        ]
        # A question still waiting for its answer is the last exchange too.
        history.append(cid, say("user", "third"))
        history.drop_last_exchange(cid)
        assert len(history.messages(cid)) == 2

    def test_delete_forgets_messages_turns_feedback_and_the_index(
        self, history: History
    ) -> None:
        owner = new("v:owner")
        cid, (turn,) = start(history, owner, "forget me")
        kept, _ = start(history, owner, "keep me")
        history.set_feedback(cid, turn, '{"rating": "up"}')

        history.delete(cid, owner)

        assert history.owner(cid) is None
        assert history.messages(cid) == []
        assert history.turns(cid) == []
        assert history.feedback(cid) == {}
        assert history.conversation_of(turn) is None
        assert history.conversations_of(owner) == [kept]
