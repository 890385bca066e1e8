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
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a conversation as kept."""

    role: str
    content: str
    created_at: float
    # The turn this message asked (user) or answered (assistant); "" for
    # messages stored before turns were recorded.
    turn: str = ""


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


@dataclass
class _Conversation:
    owner: str
    expires_at: float
    messages: list[StoredMessage] = field(default_factory=list)


class MemoryHistory:
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
        self._clock = clock
        self._conversations: dict[str, _Conversation] = {}
        self._keys: dict[str, tuple[str, float]] = {}
        self._next_sweep = 0.0

    def _sweep(self) -> float:
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + 30
            for cid in [
                c for c, v in self._conversations.items() if v.expires_at <= now
            ]:
                del self._conversations[cid]
            for key in [k for k, (_, exp) in self._keys.items() if exp <= now]:
                del self._keys[key]
        return now

    def _get(self, conversation_id: str) -> _Conversation | None:
        now = self._sweep()
        conversation = self._conversations.get(conversation_id)
        if conversation is None or conversation.expires_at <= now:
            return None
        return conversation

    def create(self, conversation_id: str, owner: str, first: StoredMessage) -> None:
        self._conversations[conversation_id] = _Conversation(
            owner, self._sweep() + self._ttl + self._turn_seconds, [first]
        )

    def owner(self, conversation_id: str) -> str | None:
        conversation = self._get(conversation_id)
        return conversation.owner if conversation else None

    def append(self, conversation_id: str, message: StoredMessage) -> None:
        conversation = self._get(conversation_id)
        if conversation is None:
            return
        conversation.messages.append(message)
        del conversation.messages[: -self._max_messages]
        now = self._clock()
        if message.role == "user":  # a turn starts: hold it for the turn
            until = now + self._ttl + self._turn_seconds
            conversation.expires_at = max(conversation.expires_at, until)
        else:
            conversation.expires_at = now + self._ttl

    def touch(self, conversation_id: str) -> None:
        conversation = self._get(conversation_id)
        if conversation is not None:
            conversation.expires_at = self._clock() + self._ttl

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        conversation = self._get(conversation_id)
        return list(conversation.messages) if conversation else []

    def claim_idempotency(self, key: str, value: str, ttl: float) -> str | None:
        now = self._sweep()
        held = self._keys.get(key)
        if held is not None and held[1] > now:
            return held[0]
        self._keys[key] = (value, now + ttl)
        return None

    def idempotent(self, key: str) -> str | None:
        now = self._sweep()
        held = self._keys.get(key)
        return held[0] if held is not None and held[1] > now else None

    def cached_answer(self, key: str) -> str | None:
        now = self._sweep()
        held = self._keys.get("answer|" + key)
        return held[0] if held is not None and held[1] > now else None

    def cache_answer(self, key: str, value: str, ttl: float) -> None:
        self._keys["answer|" + key] = (value, self._sweep() + ttl)
