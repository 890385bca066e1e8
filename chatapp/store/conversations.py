"""Conversations and idempotency keys: who owns what, and what was said.

`MemoryHistory` serves one process; `RedisHistory` (conversations_redis.py) shares
conversations across workers and hosts.

Both keep a conversation `HISTORY_TTL` seconds after the end of its last
turn (SPEC). A user message starts a turn: from then on the conversation is
held `HISTORY_TTL` plus the longest a turn may run (`turn_seconds`), so that
an answer slower than the TTL still finds it. The answer, or `touch` at the
end of a turn that stored none, sets it back to `HISTORY_TTL` from then.
Appending to a conversation that is gone does nothing: a conversation is
never re-created without its owner.

A user message carries the id of the turn it started, and the answer the
same id: the model's context holds only exchanges that were answered (see
chatapp.turns.start.context), so a message moderation blocked, or that never
got an answer, never reaches the model later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Protocol

from chatapp.store.expiring import ExpiringMap


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a conversation as kept."""

    role: str
    content: str
    created_at: float
    # The turn this message asked (user) or answered (assistant); "" for
    # messages stored before turns were recorded.
    turn: str = ""
    # On an answer with site knowledge: what it could cite as [n], as the
    # `sources` event gave it ({"n", "title", "url"}), so a reload shows them.
    sources: tuple[dict[str, Any], ...] = ()


class History(Protocol):
    """What the views and the relay need from conversation storage."""

    def create(self, conversation_id: str, owner: str, first: StoredMessage) -> None:
        """Start a conversation owned by `owner` with its first message."""

    def owner(self, conversation_id: str) -> str | None:
        """Return the conversation's owner, or None when unknown or expired."""

    def append(self, conversation_id: str, message: StoredMessage) -> None:
        """Add a message and renew the conversation's lifetime, if it still lives.

        A user message holds the conversation for its turn (see above).
        """

    def touch(self, conversation_id: str) -> None:
        """A turn ended: keep the conversation HISTORY_TTL from now, if it lives."""

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        """Return the conversation's messages, oldest first."""

    def claim_idempotency(self, key: str, value: str, ttl: float) -> str | None:
        """Store `value` under `key` unless taken; return the earlier value if so."""

    def idempotent(self, key: str) -> str | None:
        """Return the value claimed under `key`, if any, without claiming it."""

    def cached_answer(self, key: str) -> str | None:
        """Return the answer cached under `key`, if any."""

    def cache_answer(self, key: str, value: str, ttl: float) -> None:
        """Keep an answer under `key` for `ttl` seconds."""

    def remember_turn(self, conversation_id: str, owner: str, turn_id: str) -> None:
        """Index a turn under its conversation, and the conversation under its owner."""

    def turns(self, conversation_id: str) -> list[str]:
        """Return the ids of the conversation's turns, oldest first."""

    def conversation_of(self, turn_id: str) -> str | None:
        """Return the conversation a turn belongs to, while both live."""

    def conversations_of(self, owner: str) -> list[str]:
        """Return the ids of every live conversation of `owner`."""

    def set_feedback(self, conversation_id: str, turn_id: str, value: str) -> None:
        """Keep a turn's feedback with its conversation, replacing an earlier one."""

    def feedback(self, conversation_id: str) -> dict[str, str]:
        """Return the conversation's feedback by turn id."""

    def drop_last_exchange(self, conversation_id: str) -> None:
        """Remove the last user message and every message after it."""

    def delete(self, conversation_id: str, owner: str) -> None:
        """Forget a conversation: its messages, turns, feedback and index entry."""


@dataclass
class _Conversation:
    owner: str
    messages: list[StoredMessage] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    feedback: dict[str, str] = field(default_factory=dict)


class MemoryHistory(History):
    """Conversations and idempotency keys in this process's memory."""

    def __init__(
        self,
        ttl: float,
        *,
        turn_seconds: float = 0.0,
        max_messages: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._turn_seconds = turn_seconds
        self._max_messages = max_messages
        self._conversations: ExpiringMap[str, _Conversation] = ExpiringMap(
            clock, sweep_every=30, on_expire=self._unindex
        )
        self._keys: ExpiringMap[str, str] = ExpiringMap(clock, sweep_every=30)
        self._turns: dict[str, str] = {}  # turn -> conversation, while it lives
        self._owners: dict[str, set[str]] = {}

    def create(self, conversation_id: str, owner: str, first: StoredMessage) -> None:
        self._conversations.set(
            conversation_id,
            _Conversation(owner, [first]),
            self._ttl + self._turn_seconds,
        )

    def owner(self, conversation_id: str) -> str | None:
        conversation = self._conversations.get(conversation_id)
        return conversation.owner if conversation else None

    def append(self, conversation_id: str, message: StoredMessage) -> None:
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            return
        conversation.messages.append(message)
        del conversation.messages[: -self._max_messages]
        if message.role == "user":  # a turn starts: hold it for the turn
            ttl = self._ttl + self._turn_seconds
            self._conversations.extend(conversation_id, ttl)
        else:
            self._conversations.expire(conversation_id, self._ttl)

    def touch(self, conversation_id: str) -> None:
        self._conversations.expire(conversation_id, self._ttl)

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        conversation = self._conversations.get(conversation_id)
        return list(conversation.messages) if conversation else []

    def claim_idempotency(self, key: str, value: str, ttl: float) -> str | None:
        if self._keys.add(key, value, ttl):
            return None
        return self._keys.get(key)

    def idempotent(self, key: str) -> str | None:
        return self._keys.get(key)

    def cached_answer(self, key: str) -> str | None:
        return self._keys.get("answer|" + key)

    def cache_answer(self, key: str, value: str, ttl: float) -> None:
        self._keys.set("answer|" + key, value, ttl)

    def _unindex(self, conversation_id: str, conversation: _Conversation) -> None:
        """Drop what points at a conversation that is gone."""
        for turn_id in conversation.turns:
            self._turns.pop(turn_id, None)
        mine = self._owners.get(conversation.owner)
        if mine is not None:
            mine.discard(conversation_id)
            if not mine:
                del self._owners[conversation.owner]

    def remember_turn(self, conversation_id: str, owner: str, turn_id: str) -> None:
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            return
        conversation.turns.append(turn_id)
        self._owners.setdefault(owner, set()).add(conversation_id)
        # Lives as long as its conversation: forgotten with it, never before.
        self._turns[turn_id] = conversation_id

    def turns(self, conversation_id: str) -> list[str]:
        conversation = self._conversations.get(conversation_id)
        return list(conversation.turns) if conversation else []

    def conversation_of(self, turn_id: str) -> str | None:
        conversation_id = self._turns.get(turn_id)
        if conversation_id is None or self._conversations.get(conversation_id) is None:
            return None
        return conversation_id

    def conversations_of(self, owner: str) -> list[str]:
        mine = self._owners.get(owner, set())
        return [c for c in sorted(mine) if self._conversations.get(c) is not None]

    def set_feedback(self, conversation_id: str, turn_id: str, value: str) -> None:
        conversation = self._conversations.get(conversation_id)
        if conversation is not None:
            conversation.feedback[turn_id] = value

    def feedback(self, conversation_id: str) -> dict[str, str]:
        conversation = self._conversations.get(conversation_id)
        return dict(conversation.feedback) if conversation else {}

    def drop_last_exchange(self, conversation_id: str) -> None:
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            return
        roles = [m.role for m in conversation.messages]
        if "user" in roles:
            last = len(roles) - 1 - roles[::-1].index("user")
            del conversation.messages[last:]

    def delete(self, conversation_id: str, owner: str) -> None:
        conversation = self._conversations.get(conversation_id)
        if conversation is not None and conversation.owner == owner:
            self._conversations.pop(conversation_id)
            self._unindex(conversation_id, conversation)
