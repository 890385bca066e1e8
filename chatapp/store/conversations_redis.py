"""Conversations, idempotency keys and cached answers on Redis.

Keys:

  chatapp:c:{id}             list: the owner first, then the messages as JSON
  chatapp:idem:<owner>|<key> the body first returned for an idempotency key
  chatapp:answer:<sha256>    a cached first-turn answer (CHATAPP_CACHE_TTL)

A conversation is one key, so starting one or adding a message is one write
and its renewal, and reading it is one read. Adding a message is one Lua
script: it never re-creates a conversation that expired (the list would have
no owner), and trimming past `max_messages` keeps the owner first in the same
atomic step, so no reader ever sees the list without its owner.
"""

from __future__ import annotations

import json
import math
from typing import Any

from chatapp.store.conversations import StoredMessage
from chatapp.store.redis import Client
from chatapp.store.redis import guard
from chatapp.store.redis import slot_pipeline


def _conv(conversation_id: str) -> str:
    return f"chatapp:c:{{{conversation_id}}}"


def _encode(message: StoredMessage) -> str:
    value = {"role": message.role, "content": message.content, "at": message.created_at}
    if message.turn:
        value["turn"] = message.turn
    return json.dumps(value)


# KEYS[1] the conversation; ARGV: the message, the most messages kept, the
# seconds to keep the conversation, and "1" to only ever lengthen that.
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local length = redis.call('RPUSH', KEYS[1], ARGV[1])
local most = tonumber(ARGV[2])
if length > most + 1 then
  local owner = redis.call('LINDEX', KEYS[1], 0)
  redis.call('LTRIM', KEYS[1], length - most, -1)
  redis.call('LPUSH', KEYS[1], owner)
end
local ttl = tonumber(ARGV[3])
if ARGV[4] ~= '1' or redis.call('TTL', KEYS[1]) < ttl then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return length
"""


class RedisHistory:
    """Conversations and idempotency keys shared by every worker and host."""

    def __init__(
        self,
        client: Client,
        ttl: float,
        *,
        turn_seconds: float = 0.0,
        max_messages: int = 200,
    ):
        self._r: Any = client
        self._ttl = max(1, math.ceil(ttl))
        # Held while a turn runs: the TTL plus the longest a turn may take.
        self._held = max(1, math.ceil(ttl + turn_seconds))
        self._max_messages = max_messages
        self._append = self._r.register_script(_APPEND)

    def create(self, conversation_id: str, owner: str, first: StoredMessage) -> None:
        key = _conv(conversation_id)
        with guard("create conversation"), slot_pipeline(self._r, key) as p:
            p.rpush(key, json.dumps({"owner": owner}), _encode(first))
            p.expire(key, self._held)
            p.execute()

    def owner(self, conversation_id: str) -> str | None:
        with guard("read conversation"):
            head = self._r.lindex(_conv(conversation_id), 0)
        if head is None:
            return None
        value = json.loads(head)
        # A list that lost its owner (written before appends were atomic)
        # belongs to no one: 404, never a 500.
        owner = value.get("owner") if isinstance(value, dict) else None
        return str(owner) if isinstance(owner, str) else None

    def append(self, conversation_id: str, message: StoredMessage) -> None:
        key = _conv(conversation_id)
        starts_turn = message.role == "user"
        with guard("append message"):
            self._append(
                keys=[key],
                args=[
                    _encode(message),
                    self._max_messages,
                    self._held if starts_turn else self._ttl,
                    1 if starts_turn else 0,
                ],
            )

    def touch(self, conversation_id: str) -> None:
        with guard("renew conversation"):
            self._r.expire(_conv(conversation_id), self._ttl)

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        with guard("read messages"):
            items = self._r.lrange(_conv(conversation_id), 1, -1)
        out = []
        for item in items:
            value: dict[str, Any] = json.loads(item)
            out.append(
                StoredMessage(
                    value["role"], value["content"], value["at"], value.get("turn", "")
                )
            )
        return out

    def claim_idempotency(self, key: str, value: str, ttl: float) -> str | None:
        with guard("idempotency"):
            earlier = self._r.set(
                f"chatapp:idem:{key}", value, nx=True, get=True, ex=max(1, int(ttl))
            )
        return earlier.decode() if earlier is not None else None

    def idempotent(self, key: str) -> str | None:
        with guard("read idempotency key"):
            value = self._r.get(f"chatapp:idem:{key}")
        return value.decode() if value is not None else None

    def cached_answer(self, key: str) -> str | None:
        with guard("read cached answer"):
            value = self._r.get(f"chatapp:answer:{key}")
        return value.decode() if value is not None else None

    def cache_answer(self, key: str, value: str, ttl: float) -> None:
        with guard("cache answer"):
            self._r.set(f"chatapp:answer:{key}", value, ex=max(1, int(ttl)))
