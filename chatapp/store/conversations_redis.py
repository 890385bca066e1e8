"""Conversations, idempotency keys and cached answers on Redis.

Keys:

  chatapp:c:{id}             list: the owner first, then the messages as JSON
  chatapp:idem:<owner>|<key> the body first returned for an idempotency key
  chatapp:answer:<sha256>    a cached first-turn answer (CHATAPP_CACHE_TTL)
  chatapp:cm:{id}            hash: `t:<turn id>` per turn, `f:<turn id>` its feedback
  chatapp:tc:<turn id>       the conversation a turn belongs to
  chatapp:oc:<sha256 owner>  sorted set: the owner's conversation ids, scored by
                             when each expires (the index DELETE /api/conversations
                             reads, on every host)

The index keys live a grace period (the stream TTL) past their conversation's
renewal, so that a conversation renewed by its last answer is still found.

A conversation is one key, so starting one or adding a message is one write
and its renewal, and reading it is one read. Adding a message is one Lua
script: it never re-creates a conversation that expired (the list would have
no owner), and trimming past `max_messages` keeps the owner first in the same
atomic step, so no reader ever sees the list without its owner.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

from chatapp.store.conversations import History
from chatapp.store.conversations import StoredMessage
from chatapp.store.redis import Client
from chatapp.store.redis import guard
from chatapp.store.redis_cluster import slot_pipeline


def _conv(conversation_id: str) -> str:
    return f"chatapp:c:{{{conversation_id}}}"


def _encode(message: StoredMessage) -> str:
    value: dict[str, Any] = {
        "role": message.role,
        "content": message.content,
        "at": message.created_at,
    }
    if message.turn:
        value["turn"] = message.turn
    if message.sources:
        value["sources"] = list(message.sources)
    return json.dumps(value)


def _decode(item: bytes) -> StoredMessage:
    value: dict[str, Any] = json.loads(item)
    sources = value.get("sources")
    return StoredMessage(
        value["role"],
        value["content"],
        value["at"],
        value.get("turn", ""),
        tuple(s for s in sources if isinstance(s, dict))
        if isinstance(sources, list)
        else (),
    )


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


class RedisHistory(History):
    """Conversations and idempotency keys shared by every worker and host."""

    def __init__(
        self,
        client: Client,
        ttl: float,
        *,
        turn_seconds: float = 0.0,
        max_messages: int = 200,
        grace: float = 600,
    ):
        self._r: Any = client
        self._ttl = max(1, math.ceil(ttl))
        # Held while a turn runs: the TTL plus the longest a turn may take.
        self._held = max(1, math.ceil(ttl + turn_seconds))
        self._max_messages = max_messages
        self._append = self._r.register_script(_APPEND)
        self._index_ttl = self._ttl + max(1, int(max(grace, turn_seconds)))

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
        return [_decode(item) for item in items]

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

    def remember_turn(self, conversation_id: str, owner: str, turn_id: str) -> None:
        meta, index = _meta(conversation_id), _owner_index(owner)
        with guard("index turn"), slot_pipeline(self._r, meta) as p:
            p.hset(meta, f"t:{turn_id}", "")
            p.expire(meta, self._index_ttl)
            p.execute()
        with guard("index turn"):
            self._r.set(_turn(turn_id), conversation_id, ex=self._index_ttl)
        with guard("index conversation"), slot_pipeline(self._r, index) as p:
            now = time.time()
            p.zadd(index, {conversation_id: now + self._index_ttl})
            p.zremrangebyscore(index, "-inf", now)
            p.expire(index, self._index_ttl)
            p.execute()

    def turns(self, conversation_id: str) -> list[str]:
        with guard("read turns"):
            fields = self._r.hkeys(_meta(conversation_id))
        names = [f.decode() for f in fields]
        return [n[2:] for n in names if n.startswith("t:")]

    def conversation_of(self, turn_id: str) -> str | None:
        with guard("read turn"):
            cid = self._r.get(_turn(turn_id))
        return cid.decode() if cid is not None else None

    def conversations_of(self, owner: str) -> list[str]:
        with guard("read conversations"):
            ids = self._r.zrangebyscore(_owner_index(owner), time.time(), "+inf")
        return [i.decode() for i in ids]

    def set_feedback(self, conversation_id: str, turn_id: str, value: str) -> None:
        meta = _meta(conversation_id)
        with guard("store feedback"), slot_pipeline(self._r, meta) as p:
            p.hset(meta, f"f:{turn_id}", value)
            p.expire(meta, self._index_ttl)
            p.execute()

    def feedback(self, conversation_id: str) -> dict[str, str]:
        with guard("read feedback"):
            fields = self._r.hgetall(_meta(conversation_id))
        out = {}
        for name, value in fields.items():
            if name.startswith(b"f:"):
                out[name[2:].decode()] = value.decode()
        return out

    def drop_last_exchange(self, conversation_id: str) -> None:
        with guard("replace last exchange"):
            self._r.eval(_DROP_LAST_EXCHANGE, 1, _conv(conversation_id))

    def delete(self, conversation_id: str, owner: str) -> None:
        turns = self.turns(conversation_id)
        key, meta = _conv(conversation_id), _meta(conversation_id)
        with guard("delete conversation"), slot_pipeline(self._r, key) as p:
            p.delete(key)
            p.delete(meta)
            p.execute()
        with guard("delete conversation"):
            for turn_id in turns:
                self._r.delete(_turn(turn_id))
            self._r.zrem(_owner_index(owner), conversation_id)


# Keep the owner (index 0) and every message before the last user message.
_DROP_LAST_EXCHANGE = """
local items = redis.call('LRANGE', KEYS[1], 1, -1)
for i = #items, 1, -1 do
  if cjson.decode(items[i])['role'] == 'user' then
    redis.call('LTRIM', KEYS[1], 0, i - 1)
    return i
  end
end
return 0
"""


def _meta(conversation_id: str) -> str:
    return f"chatapp:cm:{{{conversation_id}}}"


def _turn(turn_id: str) -> str:
    return f"chatapp:tc:{turn_id}"


def _owner_index(owner: str) -> str:
    return "chatapp:oc:" + hashlib.sha256(owner.encode()).hexdigest()
