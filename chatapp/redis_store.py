"""Turn log and history on Redis, shared by every worker and host.

Keys (the `{id}` hash tag keeps one turn's keys on one cluster slot):

  chatapp:turn:{id}            hash: owner, conversation_id, created_at, done_id
  chatapp:turn:{id}:events     stream; entry id `n-0` is SSE id n
  chatapp:turn:{id}:cancel     set when a cancel is asked
  chatapp:turn:{id}:reader     present while a reader is (expires after orphan s)
  chatapp:turn:{id}:lease      present while its producer lives
  chatapp:turn:{id}:reaped     claimed by the reader that ends a dead producer's turn
  chatapp:conv:{id}            hash: owner
  chatapp:conv:{id}:messages   list of JSON messages
  chatapp:idem:<owner>|<key>   the body first returned for an idempotency key
  chatapp:answer:<sha256>      a cached first-turn answer (CHATAPP_CACHE_TTL)

Every Redis failure leaves this module as StoreError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import redis

from chatapp.errors import StoreError
from chatapp.history import StoredMessage
from chatapp.streams import Event
from chatapp.streams import TurnInfo
from chatapp.streams import TurnPulse

log = logging.getLogger(__name__)

CANCEL_CHANNEL = "chatapp:cancel"
# Blocking reads wait at most a few seconds (see Relay.events), so a socket
# timeout a little above that notices a dead Redis without false alarms.
SOCKET_TIMEOUT = 6.0
CONNECT_TIMEOUT = 1.0


def connect(url: str, max_connections: int) -> redis.Redis:
    """Make the worker's one Redis client, pooled for its streams."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=2,  # wait for a free connection at most this long
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=30,
        decode_responses=True,
    )
    return redis.Redis(connection_pool=pool)


@contextmanager
def _guard(what: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"redis: {what} failed ({type(exc).__name__})") from exc


def _turn(turn_id: str) -> str:
    return f"chatapp:turn:{{{turn_id}}}"


class RedisTurnLog:
    """Turn log on Redis Streams: resumable from any worker and any host."""

    def __init__(self, client: redis.Redis, running_ttl: float) -> None:
        self._r: Any = client  # decode_responses=True: replies are str
        self._running_ttl = int(running_ttl) + 1
        self._listeners: list[Callable[[str], None]] = []
        self._subscriber: gevent.Greenlet | None = None

    def create(self, info: TurnInfo, ttl: float) -> None:
        key = _turn(info.id)
        with _guard("create turn"), self._r.pipeline(transaction=False) as pipe:
            pipe.hset(
                key,
                mapping={
                    "owner": info.owner,
                    "conversation_id": info.conversation_id,
                    "created_at": repr(info.created_at),
                },
            )
            pipe.expire(key, int(ttl) + 1)
            pipe.execute()

    def info(self, turn_id: str) -> TurnInfo | None:
        with _guard("read turn"):
            fields = self._r.hgetall(_turn(turn_id))
        if not fields:
            return None
        return TurnInfo(
            turn_id,
            fields["owner"],
            fields["conversation_id"],
            float(fields["created_at"]),
        )

    def append(self, turn_id: str, events: list[Event]) -> None:
        key = _turn(turn_id) + ":events"
        with _guard("append events"), self._r.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(key, {"e": event.event, "d": event.data}, id=f"{event.id}-0")
            if events[0].id == 1:
                # The stream exists from its first entry on; give it the
                # turn's lifetime then, not one command per event.
                pipe.expire(key, self._running_ttl)
            pipe.execute()

    def finish(self, turn_id: str, done_id: int, ttl: float) -> None:
        key = _turn(turn_id)
        with _guard("finish turn"), self._r.pipeline(transaction=False) as pipe:
            pipe.hset(key, "done_id", done_id)
            for suffix in ("", ":events", ":cancel"):
                pipe.expire(key + suffix, int(ttl))
            pipe.delete(key + ":lease", key + ":reader")
            pipe.execute()

    def done_id(self, turn_id: str) -> int | None:
        with _guard("read done id"):
            value = self._r.hget(_turn(turn_id), "done_id")
        return int(value) if value is not None else None

    def read(self, turn_id: str, after: int, timeout: float) -> list[Event] | None:
        key = _turn(turn_id) + ":events"
        block = int(timeout * 1000) if timeout > 0 else None
        with _guard("read events"):
            reply = self._r.xread({key: f"{after}-0"}, count=2000, block=block)
            if not reply:
                return None if not self._r.exists(_turn(turn_id)) else []
        entries = reply[0][1]
        return [
            Event(int(entry_id.split("-", 1)[0]), fields["e"], fields["d"])
            for entry_id, fields in entries
        ]

    def request_cancel(self, turn_id: str) -> None:
        key = _turn(turn_id) + ":cancel"
        with _guard("cancel"), self._r.pipeline(transaction=False) as pipe:
            pipe.set(key, "1", ex=self._running_ttl)
            pipe.publish(CANCEL_CHANNEL, turn_id)
            pipe.execute()

    def cancel_requested(self, turn_id: str) -> bool:
        with _guard("read cancel"):
            return bool(self._r.exists(_turn(turn_id) + ":cancel"))

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)
        if self._subscriber is None:
            self._subscriber = gevent.spawn(self._listen)

    def _listen(self) -> None:
        """Relay cancel requests from any host to this worker's producers."""
        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CANCEL_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=SOCKET_TIMEOUT / 2)
                    if message and message.get("type") == "message":
                        for callback in self._listeners:
                            callback(str(message["data"]))
            except redis.RedisError:
                # The supervisor still sees cancel keys every second, so a
                # cancel published while we reconnect is not lost.
                log.warning("cancel listener lost Redis; reconnecting")
                gevent.sleep(0.5)
            finally:
                pubsub.close()

    def touch_reader(self, turn_id: str, ttl: float) -> None:
        with _guard("touch reader"):
            self._r.set(_turn(turn_id) + ":reader", "1", px=int(ttl * 1000))

    def pulse(self, turn_ids: list[str], lease: float) -> list[TurnPulse]:
        with _guard("pulse"), self._r.pipeline(transaction=False) as pipe:
            for turn_id in turn_ids:
                key = _turn(turn_id)
                pipe.set(key + ":lease", "1", px=int(lease * 1000))
                pipe.exists(key + ":reader")
                pipe.exists(key + ":cancel")
            replies = pipe.execute()
        return [
            TurnPulse(readers=bool(replies[i + 1]), cancel=bool(replies[i + 2]))
            for i in range(0, len(replies), 3)
        ]

    def producer_alive(self, turn_id: str) -> bool:
        with _guard("read lease"):
            return bool(self._r.exists(_turn(turn_id) + ":lease"))

    def claim_reap(self, turn_id: str) -> int | None:
        key = _turn(turn_id)
        with _guard("reap"):
            if not self._r.set(key + ":reaped", "1", nx=True, ex=60):
                return None
            last = self._r.xrevrange(key + ":events", count=1)
        return int(last[0][0].split("-", 1)[0]) if last else 0

    def ping(self) -> None:
        with _guard("ping"):
            self._r.ping()


def _conv(conversation_id: str) -> str:
    return f"chatapp:conv:{{{conversation_id}}}"


class RedisHistory:
    """Conversations and idempotency keys on Redis."""

    def __init__(self, client: redis.Redis, ttl: float, *, max_messages: int = 200):
        self._r: Any = client  # decode_responses=True: replies are str
        self._ttl = int(ttl)
        self._max_messages = max_messages

    def create(self, conversation_id: str, owner: str) -> None:
        with _guard("create conversation"):
            self._r.set(_conv(conversation_id), owner, ex=self._ttl)

    def owner(self, conversation_id: str) -> str | None:
        with _guard("read conversation"):
            value = self._r.get(_conv(conversation_id))
        return str(value) if value is not None else None

    def append(self, conversation_id: str, message: StoredMessage) -> None:
        key = _conv(conversation_id)
        item = json.dumps(
            {"role": message.role, "content": message.content, "at": message.created_at}
        )
        with _guard("append message"), self._r.pipeline(transaction=False) as pipe:
            pipe.rpush(key + ":messages", item)
            pipe.ltrim(key + ":messages", -self._max_messages, -1)
            pipe.expire(key + ":messages", self._ttl)
            pipe.expire(key, self._ttl)
            pipe.execute()

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        with _guard("read messages"):
            items = self._r.lrange(_conv(conversation_id) + ":messages", 0, -1)
        out = []
        for item in items:
            value: dict[str, Any] = json.loads(item)
            out.append(StoredMessage(value["role"], value["content"], value["at"]))
        return out

    def claim_idempotency(self, key: str, value: str, ttl: float) -> str | None:
        name = f"chatapp:idem:{key}"
        with _guard("idempotency"):
            if self._r.set(name, value, nx=True, ex=max(1, int(ttl))):
                return None
            earlier = self._r.get(name)
        return str(earlier) if earlier is not None else None

    def idempotent(self, key: str) -> str | None:
        with _guard("read idempotency key"):
            value = self._r.get(f"chatapp:idem:{key}")
        return str(value) if value is not None else None

    def cached_answer(self, key: str) -> str | None:
        with _guard("read cached answer"):
            value = self._r.get(f"chatapp:answer:{key}")
        return str(value) if value is not None else None

    def cache_answer(self, key: str, value: str, ttl: float) -> None:
        with _guard("cache answer"):
            self._r.set(f"chatapp:answer:{key}", value, ex=max(1, int(ttl)))
