"""Conversations, idempotency keys and cached answers on Redis.

Keys:

  chatapp:c:{id}             list: the owner first, then the messages as JSON
  chatapp:idem:<owner>|<key> the body first returned for an idempotency key
  chatapp:answer:<sha256>    a cached first-turn answer (CHATAPP_CACHE_TTL)

A conversation is one key, so starting one or adding a message is one write
and its renewal, and reading it is one read.
"""

from __future__ import annotations

import json
from typing import Any

from chatapp.store.conversations import StoredMessage
from chatapp.store.redis import Client
from chatapp.store.redis import guard
from chatapp.store.redis import slot_pipeline


def _conv(conversation_id: str) -> str:
    return f"chatapp:c:{{{conversation_id}}}"


def _encode(message: StoredMessage) -> str:
    return json.dumps(
        {"role": message.role, "content": message.content, "at": message.created_at}
    )


class RedisHistory:
    """Conversations and idempotency keys shared by every worker and host."""

    def __init__(self, client: Client, ttl: float, *, max_messages: int = 200):
        self._r: Any = client
        self._ttl = max(1, int(ttl))
        self._max_messages = max_messages

    def create(self, conversation_id: str, owner: str, first: StoredMessage) -> None:
        key = _conv(conversation_id)
        with guard("create conversation"), slot_pipeline(self._r, key) as p:
            p.rpush(key, json.dumps({"owner": owner}), _encode(first))
            p.expire(key, self._ttl)
            p.execute()

    def owner(self, conversation_id: str) -> str | None:
        with guard("read conversation"):
            head = self._r.lindex(_conv(conversation_id), 0)
        return str(json.loads(head)["owner"]) if head is not None else None

    def append(self, conversation_id: str, message: StoredMessage) -> None:
        key = _conv(conversation_id)
        with guard("append message"), slot_pipeline(self._r, key) as p:
            p.rpush(key, _encode(message))
            p.expire(key, self._ttl)
            length, _ = p.execute()
        if length > self._max_messages + 1:
            self._trim(key)

    def _trim(self, key: str) -> None:
        """Keep the owner and the newest messages."""
        with guard("trim conversation"), self._r.pipeline(transaction=True) as p:
            p.lindex(key, 0)
            p.ltrim(key, -self._max_messages, -1)
            head, _ = p.execute()
            if head is not None:
                p.lpush(key, head)
                p.execute()

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        with guard("read messages"):
            items = self._r.lrange(_conv(conversation_id), 1, -1)
        out = []
        for item in items:
            value: dict[str, Any] = json.loads(item)
            out.append(StoredMessage(value["role"], value["content"], value["at"]))
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
