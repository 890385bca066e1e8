"""Coordination on Redis: cancels, readers' marks and leases across hosts.

Keys are in layout_redis.py. Cancels are also announced on the channel
`chatapp:cancel`: PUBLISH and SUBSCRIBE on one server or Sentinel, SPUBLISH
and SSUBSCRIBE (sharded pub/sub, Redis 7) on Cluster, where the channel
lives on the primary of its slot. One greenlet per worker listens, on a
connection of its own, and tells `on_resubscribe` callbacks when it had to
subscribe again (a cancel may have been announced meanwhile).

Every Redis failure leaves this module as StoreError.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import redis

from chatapp.store.coordination import Coordination
from chatapp.store.coordination import delta_chars
from chatapp.store.coordination import worker_name
from chatapp.store.layout_redis import fields
from chatapp.store.layout_redis import split
from chatapp.store.layout_redis import turn_key
from chatapp.store.layout_redis import worker_key
from chatapp.store.redis import Client
from chatapp.store.redis import guard
from chatapp.store.redis_cluster import is_cluster
from chatapp.store.redis_cluster import node_client
from chatapp.store.redis_cluster import refresh

log = logging.getLogger(__name__)

CANCEL_CHANNEL = "chatapp:cancel"


class RedisCoordination(Coordination):
    """Coordination through Redis, shared by every worker and host."""

    def __init__(self, client: Client, *, cancel_ttl: float) -> None:
        self._r: Any = client
        self.worker = worker_name()
        self._cancel_ttl = int(cancel_ttl) + 1
        self._listeners: list[Callable[[str], None]] = []
        self._resubscribed: list[Callable[[], None]] = []
        self._subscriber: gevent.Greenlet | None = None

    # -- cancels --------------------------------------------------------------

    def request_cancel(self, turn_id: str) -> None:
        key = turn_key(turn_id) + ":cancel"
        if is_cluster(self._r):
            # The flag and the channel live on different slots.
            with guard("cancel"):
                self._r.set(key, "1", ex=self._cancel_ttl)
                node_client(self._r, CANCEL_CHANNEL).spublish(CANCEL_CHANNEL, turn_id)
            return
        with guard("cancel"), self._r.pipeline(transaction=False) as pipe:
            pipe.set(key, "1", ex=self._cancel_ttl)
            pipe.publish(CANCEL_CHANNEL, turn_id)
            pipe.execute()

    def cancels_requested(self, turn_ids: list[str]) -> list[bool]:
        keys = [turn_key(t) + ":cancel" for t in turn_ids]
        return self._exist(keys, "read cancels")

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)
        if self._subscriber is None:
            self._subscriber = gevent.spawn(self._listen)

    def on_resubscribe(self, callback: Callable[[], None]) -> None:
        self._resubscribed.append(callback)

    def _listen(self) -> None:
        """Relay cancel requests from any host to this worker's producers."""
        first = True
        while True:
            pubsub: Any = None
            try:
                pubsub = self._subscribe()
                if not first:
                    for callback in self._resubscribed:
                        callback()
                first = False
                while True:
                    message = pubsub.get_message(timeout=30)
                    kind = message and message.get("type")
                    if kind in ("message", "smessage"):
                        turn_id = message["data"].decode()
                        for listener in self._listeners:
                            listener(turn_id)
                    elif kind in ("unsubscribe", "sunsubscribe"):
                        # The channel's slot moved to another primary.
                        raise redis.ConnectionError("cancel channel moved")
            except redis.RedisError:
                log.warning("cancel listener lost Redis; reconnecting")
                first = False
                try:
                    refresh(self._r)
                except redis.RedisError:
                    pass
                gevent.sleep(0.5)
            finally:
                if pubsub is not None:
                    pubsub.close()

    def _subscribe(self) -> Any:
        if is_cluster(self._r):
            pubsub = node_client(self._r, CANCEL_CHANNEL).pubsub()
            pubsub.ssubscribe(CANCEL_CHANNEL)
        else:
            pubsub = self._r.pubsub()
            pubsub.subscribe(CANCEL_CHANNEL)
        return pubsub

    # -- readers and leases ---------------------------------------------------

    def mark_readers(self, turn_ids: list[str], seconds: float) -> None:
        if not turn_ids:
            return
        px = max(1, int(seconds * 1000))
        with guard("mark readers"), self._r.pipeline(transaction=False) as pipe:
            for turn_id in turn_ids:
                pipe.set(turn_key(turn_id) + ":reader", "1", px=px)
            pipe.execute()

    def readers_elsewhere(self, turn_ids: list[str]) -> list[bool]:
        keys = [turn_key(t) + ":reader" for t in turn_ids]
        return self._exist(keys, "read readers")

    def renew_lease(self, seconds: float) -> None:
        with guard("renew lease"):
            self._r.set(worker_key(self.worker), "1", px=int(seconds * 1000))

    def workers_alive(self, workers: list[str]) -> list[bool]:
        return self._exist([worker_key(w) for w in workers], "read leases")

    def _exist(self, keys: list[str], what: str) -> list[bool]:
        if not keys:
            return []
        with guard(what), self._r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            return [bool(n) for n in pipe.execute()]

    # -- what a dead worker's turns left ------------------------------------------

    def claim_reap(self, turn_id: str, seconds: float) -> bool:
        key = turn_key(turn_id) + ":reaped"
        with guard("claim a dead producer's turn"):
            return bool(self._r.set(key, "1", nx=True, ex=max(1, int(seconds))))

    def streamed_chars(self, turn_id: str) -> int:
        with guard("read turn"):
            entries = self._r.xrange(turn_key(turn_id), "-", "+")
        return delta_chars(
            frame for _, raw in entries for frame in split(fields(raw)[b"f"])
        )
