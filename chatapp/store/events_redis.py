"""The turn log on Redis Streams: resumable from any worker and any host.

Keys and entries are in layout_redis.py. A turn's producer writes its
stream; readers in the producer's own worker follow its in-process tail, so
Redis only serves readers elsewhere, through this worker's Follower
(follower_redis.py). The first frames go out at once, later ones at most
every WRITE_WINDOW seconds, joined into one entry.

The producer's worker name (its lease, coordination_redis.py) is stored with
the turn's facts, so that readers elsewhere can tell when it died.

Every Redis failure leaves this module as StoreError.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import gevent
import gevent.lock
import redis

from chatapp.store.coordination import Coordination
from chatapp.store.events import EventLog
from chatapp.store.follower_redis import Follower
from chatapp.store.layout_redis import gone_key
from chatapp.store.layout_redis import turn_key
from chatapp.store.redis import Client
from chatapp.store.redis import guard
from chatapp.store.redis import ping
from chatapp.store.redis_cluster import node_groups
from chatapp.store.redis_cluster import slot_pipeline
from chatapp.store.tail import Tail
from chatapp.store.turn import TurnInfo

log = logging.getLogger(__name__)

# Readers elsewhere see a turn's text at most this much later than readers
# in the producer's worker; the first token is never held back.
WRITE_WINDOW = 0.1


class _Outbox:
    """How much of a locally produced turn is in Redis already."""

    __slots__ = ("flushed", "lock")

    def __init__(self) -> None:
        self.flushed = 1  # the start frame goes out with the turn's facts
        self.lock = gevent.lock.Semaphore()


class RedisEventLog(EventLog):
    """Turn log on Redis Streams, shared by every worker and host."""

    def __init__(
        self,
        client: Client,
        coordination: Coordination,
        *,
        stream_ttl: float,
        orphan: float,
    ) -> None:
        self._r: Any = client
        self.worker = coordination.worker
        self._local: dict[str, tuple[TurnInfo, Tail, _Outbox]] = {}
        # Turns with frames not yet in Redis, written together every window.
        self._dirty: dict[str, tuple[TurnInfo, Tail, _Outbox]] = {}
        self._writer: gevent.Greenlet | None = None
        self.follower = Follower(
            client, coordination, stream_ttl=stream_ttl, orphan=orphan
        )

    # -- the producer's side ------------------------------------------------

    def create(self, info: TurnInfo, start: bytes, ttl: float) -> Tail:
        key = turn_key(info.id)
        fields = {
            "f": start,
            "o": info.owner,
            "c": info.conversation_id,
            "t": repr(info.created_at),
            "w": self.worker,
        }
        with guard("create turn"), slot_pipeline(self._r, key) as pipe:
            pipe.xadd(key, fields, id="1-0")
            pipe.expire(key, int(ttl) + 1)
            pipe.execute()
        tail = Tail([start])
        self._local[info.id] = (info, tail, _Outbox())
        return tail

    def append(self, turn_id: str, tail: Tail, frames: list[bytes]) -> None:
        tail.extend(frames)
        local = self._local.get(turn_id)
        if local is None:
            return
        box = local[2]
        if box.flushed <= 1:
            self._flush(turn_id, tail, box)  # the first text is never held back
            return
        self._dirty[turn_id] = local
        if self._writer is None:
            self._writer = gevent.spawn_later(WRITE_WINDOW, self._write_dirty)

    def _write_dirty(self) -> None:
        """Write every turn's new frames in one pipeline, once per window."""
        try:
            while self._dirty:
                dirty, self._dirty = self._dirty, {}
                self._write_batch(dirty)
                if self._dirty:
                    gevent.sleep(WRITE_WINDOW)
        finally:
            self._writer = None

    def _write_batch(self, dirty: dict[str, tuple[TurnInfo, Tail, _Outbox]]) -> None:
        batch = []
        for turn_id, local in dirty.items():
            box = local[2]
            if not box.lock.acquire(blocking=False):
                self._dirty[turn_id] = local  # being written right now: next time
                continue
            end = len(local[1].frames)
            if end <= box.flushed:
                # Written meanwhile (its end is flushed at once): an empty
                # entry under the same id would only be refused.
                box.lock.release()
                continue
            batch.append((turn_id, local, end))
        replies: list[Any] = [None] * len(batch)
        keys = [turn_key(turn_id) for turn_id, _, _ in batch]
        try:
            groups = node_groups(self._r, keys) if batch else []
        except redis.RedisError as exc:
            groups, replies = [], [exc] * len(batch)
        for group in groups:
            # One pipeline per server (one in all off Cluster).
            try:
                with slot_pipeline(self._r, keys[group[0]]) as pipe:
                    for i in group:
                        _, (_, tail, box), end = batch[i]
                        blob = b"".join(tail.frames[box.flushed : end])
                        pipe.xadd(keys[i], {"f": blob}, id=f"{end}-0")
                    written = pipe.execute(raise_on_error=False)
            except redis.RedisError as exc:
                written = [exc] * len(group)
            for i, reply in zip(group, written, strict=True):
                replies[i] = reply
        try:
            for (turn_id, local, end), reply in zip(batch, replies, strict=True):
                if isinstance(reply, Exception):
                    # Nothing is lost: the next write takes every unwritten frame.
                    log.warning("turn %s: delayed write failed (%s)", turn_id, reply)
                    if turn_id in self._local:
                        self._dirty[turn_id] = local
                else:
                    local[2].flushed = end
        finally:
            for _, local, _ in batch:
                local[2].lock.release()

    def _flush(
        self,
        turn_id: str,
        tail: Tail,
        box: _Outbox,
        expire: float | None = None,
        last: list[bytes] | None = None,
    ) -> None:
        # `last`: frames written after the tail's, not yet in it.
        more = last or []
        with box.lock:
            end = len(tail.frames) + len(more)
            if end <= box.flushed and expire is None:
                return
            key = turn_key(turn_id)
            with guard("append frames"), slot_pipeline(self._r, key) as pipe:
                if end > box.flushed:
                    blob = b"".join([*tail.frames[box.flushed :], *more])
                    pipe.xadd(key, {"f": blob}, id=f"{end}-0")
                if expire is not None:
                    pipe.expire(key, int(expire) + 1)
                pipe.execute()
            box.flushed = end

    def finish(self, turn_id: str, tail: Tail, frames: list[bytes], ttl: float) -> None:
        local = self._local.get(turn_id)
        if local is None:
            tail.extend(frames, done=True)
            return
        try:
            # Shared storage first: a reader here that got `done` can then
            # read the whole turn from any worker or host at once.
            self._flush(turn_id, tail, local[2], expire=ttl, last=frames)
        finally:
            tail.extend(frames, done=True)
            # Readers here that come later read Redis like everyone else.
            self._local.pop(turn_id, None)

    # -- the readers' side --------------------------------------------------

    def open(self, turn_id: str) -> Tail | None:
        local = self._local.get(turn_id)
        if local is not None:
            local[1].join()
            return local[1]
        return self.follower.open(turn_id)

    def close(self, turn_id: str, tail: Tail) -> None:
        tail.leave()
        if tail.readers <= 0:
            self.follower.drop(turn_id, tail)

    def info(self, turn_id: str) -> TurnInfo | None:
        local = self._local.get(turn_id)
        if local is not None:
            return local[0]
        with guard("read turn"):
            entries = self._r.xrange(turn_key(turn_id), "1-0", "1-0")
        return _info(turn_id, entries[0][1]) if entries else None

    def forget(self, turn_id: str, remember: float) -> None:
        """Drop a finished turn's replayable frames now, before they expire."""
        key = turn_key(turn_id)
        with guard("forget turn"), slot_pipeline(self._r, key) as p:
            p.delete(key)
            p.set(gone_key(turn_id), b"1", ex=max(1, math.ceil(remember)))
            p.execute()

    def forgotten(self, turn_id: str) -> bool:
        with guard("read a deleted turn's mark"):
            return bool(self._r.exists(gone_key(turn_id)))

    def ping(self) -> None:
        with guard("ping"):
            ping(self._r)


def _info(turn_id: str, fields: dict[bytes, bytes]) -> TurnInfo:
    return TurnInfo(
        turn_id,
        fields[b"o"].decode(),
        fields[b"c"].decode(),
        float(fields[b"t"]),
    )
