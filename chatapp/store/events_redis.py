"""The turn log on Redis Streams: resumable from any worker and any host.

Keys (`{tag}` is one of TURN_TAGS, picked by the turn id; a turn's keys share
it, so on Redis Cluster they share one slot):

  chatapp:t:{tag}:id          stream; an entry holds frames joined, its id `n-0`
                              is the SSE id of its last frame; entry `1-0` also
                              holds the turn's facts (owner, conversation, worker)
  chatapp:t:{tag}:id:cancel   set when a cancel is asked
  chatapp:t:{tag}:id:reader   present while a reader elsewhere follows the turn
  chatapp:t:{tag}:id:reaped   claimed by the worker that ends a dead producer's turn
  chatapp:worker:<id>         present while that worker produces turns (its lease)

Cancels are also announced on the channel `chatapp:cancel`: PUBLISH and
SUBSCRIBE on one server or Sentinel, SPUBLISH and SSUBSCRIBE (sharded pub/sub,
Redis 7) on Cluster, where the channel lives on the primary of its slot.

Writes: readers in the producer's own worker follow its in-process tail, so
Redis only serves readers elsewhere. The first frames go out at once, later
ones at most every WRITE_WINDOW seconds, joined into one entry.

Reads: one greenlet per worker (the Follower) blocks in a single XREAD over
every turn its readers follow, on a connection of its own, and extends one
tail per turn that all of those readers share. On Cluster one XREAD may only
name keys of one slot, so the follower keeps one such reader per tag, each
on a connection to the primary of that tag's slot: at most 16.

Every Redis failure leaves this module as StoreError.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
import redis

from chatapp import sse
from chatapp.store.redis import Client
from chatapp.store.redis import guard
from chatapp.store.redis import is_cluster
from chatapp.store.redis import node_client
from chatapp.store.redis import node_groups
from chatapp.store.redis import ping
from chatapp.store.redis import refresh
from chatapp.store.redis import slot_pipeline
from chatapp.store.tail import Tail
from chatapp.store.turn import TurnInfo

log = logging.getLogger(__name__)

CANCEL_CHANNEL = "chatapp:cancel"
# Readers elsewhere see a turn's text at most this much later than readers
# in the producer's worker; the first token is never held back.
WRITE_WINDOW = 0.1
# The follower's XREAD blocks this long when nothing happens.
BLOCK_MS = 5000
# After each read, wait this long so that one XREAD brings many turns' news.
GATHER_SECONDS = 0.005
# A reader with no turn left keeps its connection this long for the next one.
IDLE_SECONDS = 10.0
# A followed turn silent this long has its producer's lease checked.
LEASE_CHECK_AFTER = 3.0
# Redis may fail this long before followed turns are given up.
STORE_GRACE = 2.0

REAPED_ERROR = {
    "code": "internal",
    "message": "The server running this answer stopped.",
    "retryable": True,
}


# A Redis Cluster puts each of these tags on one slot; tag i hashes into slots
# [1024 i, 1024 i + 1024), so the turns spread evenly over a cluster whose
# primaries hold even shares of the slot space, and a worker follows turns
# elsewhere with at most one XREAD (and connection) per tag. Per-turn tags
# would need one blocking XREAD per followed turn. Never change them: keys of
# turns in flight would move.
TURN_TAGS = (
    "t3", "t14", "t47", "t61", "t2", "t15", "t46", "t60",
    "t1", "t16", "t45", "t63", "t0", "t17", "t44", "t62",
)  # fmt: skip


def turn_tag(turn_id: str) -> str:
    """The hash tag every key of a turn carries."""
    return TURN_TAGS[zlib.crc32(turn_id.encode()) % len(TURN_TAGS)]


def _key(turn_id: str) -> str:
    return f"chatapp:t:{{{turn_tag(turn_id)}}}:{turn_id}"


def _gone_key(turn_id: str) -> str:
    """Mark a turn the visitor deleted, in the same slot as its log."""
    return f"chatapp:gone:{{{turn_tag(turn_id)}}}:{turn_id}"


def _worker_key(worker: str) -> str:
    return f"chatapp:worker:{worker}"


def _split(blob: bytes) -> list[bytes]:
    """Split an entry's joined frames back into frames."""
    return [part + b"\n\n" for part in blob.split(b"\n\n")[:-1]]


class _Outbox:
    """How much of a locally produced turn is in Redis already."""

    __slots__ = ("flushed", "lock")

    def __init__(self) -> None:
        self.flushed = 1  # the start frame goes out with the turn's facts
        self.lock = gevent.lock.Semaphore()


class RedisEventLog:
    """Turn log on Redis Streams, shared by every worker and host."""

    def __init__(
        self,
        client: Client,
        *,
        running_ttl: float,
        stream_ttl: float,
        orphan: float,
    ) -> None:
        self._r: Any = client
        self._running_ttl = int(running_ttl) + 1
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._local: dict[str, tuple[TurnInfo, Tail, _Outbox]] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._resubscribed: list[Callable[[], None]] = []
        self._subscriber: gevent.Greenlet | None = None
        # Turns with frames not yet in Redis, written together every window.
        self._dirty: dict[str, tuple[TurnInfo, Tail, _Outbox]] = {}
        self._writer: gevent.Greenlet | None = None
        self.follower = Follower(client, stream_ttl=stream_ttl, orphan=orphan)

    # -- the producer's side ------------------------------------------------

    def create(self, info: TurnInfo, start: bytes, ttl: float) -> Tail:
        key = _key(info.id)
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
        keys = [_key(turn_id) for turn_id, _, _ in batch]
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
        self, turn_id: str, tail: Tail, box: _Outbox, expire: float | None = None
    ) -> None:
        with box.lock:
            end = len(tail.frames)
            if end <= box.flushed and expire is None:
                return
            key = _key(turn_id)
            with guard("append frames"), slot_pipeline(self._r, key) as pipe:
                if end > box.flushed:
                    blob = b"".join(tail.frames[box.flushed : end])
                    pipe.xadd(key, {"f": blob}, id=f"{end}-0")
                if expire is not None:
                    pipe.expire(key, int(expire) + 1)
                pipe.execute()
            box.flushed = end

    def finish(self, turn_id: str, tail: Tail, frames: list[bytes], ttl: float) -> None:
        tail.extend(frames, done=True)
        local = self._local.get(turn_id)
        if local is None:
            return
        try:
            self._flush(turn_id, tail, local[2], expire=ttl)
        finally:
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
            entries = self._r.xrange(_key(turn_id), "1-0", "1-0")
        return _info(turn_id, entries[0][1]) if entries else None

    # -- cancels, readers, leases ---------------------------------------------

    def request_cancel(self, turn_id: str) -> None:
        key = _key(turn_id) + ":cancel"
        if is_cluster(self._r):
            # The flag and the channel live on different slots.
            with guard("cancel"):
                self._r.set(key, "1", ex=self._running_ttl)
                node_client(self._r, CANCEL_CHANNEL).spublish(CANCEL_CHANNEL, turn_id)
            return
        with guard("cancel"), self._r.pipeline(transaction=False) as pipe:
            pipe.set(key, "1", ex=self._running_ttl)
            pipe.publish(CANCEL_CHANNEL, turn_id)
            pipe.execute()

    def cancels_requested(self, turn_ids: list[str]) -> list[bool]:
        return self._exist([_key(t) + ":cancel" for t in turn_ids], "read cancels")

    def readers_elsewhere(self, turn_ids: list[str]) -> list[bool]:
        return self._exist([_key(t) + ":reader" for t in turn_ids], "read readers")

    def workers_alive(self, workers: list[str]) -> list[bool]:
        """Tell, for each worker, whether its lease is still held."""
        return self._exist([_worker_key(w) for w in workers], "read leases")

    def streamed_chars(self, turn_id: str) -> int:
        """Characters of answer text a turn's log holds (0 once it expired)."""
        with guard("read turn"):
            entries = self._r.xrange(_key(turn_id), "-", "+")
        chars = 0
        for _, fields in entries:
            for frame in _split(_fields(fields)[b"f"]):
                if sse.is_delta(frame):
                    chars += len(json.loads(sse.parse(frame)[2])["text"])
        return chars

    def _exist(self, keys: list[str], what: str) -> list[bool]:
        if not keys:
            return []
        with guard(what), self._r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            return [bool(n) for n in pipe.execute()]

    def renew_lease(self, seconds: float) -> None:
        with guard("renew lease"):
            self._r.set(_worker_key(self.worker), "1", px=int(seconds * 1000))

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)
        if self._subscriber is None:
            self._subscriber = gevent.spawn(self._listen)

    def on_resubscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever cancels may have been missed."""
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

    def forget(self, turn_id: str, remember: float) -> None:
        """Drop a finished turn's replayable frames now, before they expire."""
        key = _key(turn_id)
        with guard("forget turn"), slot_pipeline(self._r, key) as p:
            p.delete(key)
            p.set(_gone_key(turn_id), b"1", ex=max(1, math.ceil(remember)))
            p.execute()

    def forgotten(self, turn_id: str) -> bool:
        with guard("read a deleted turn's mark"):
            return bool(self._r.exists(_gone_key(turn_id)))

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


class _Mirror:
    """A turn produced elsewhere, as this worker follows it."""

    __slots__ = ("group", "heard_at", "key", "tail", "worker")

    def __init__(self, key: str, group: str, tail: Tail, worker: str) -> None:
        self.key = key
        self.group = group
        self.tail = tail
        self.worker = worker
        self.heard_at = time.monotonic()


class _Reader:
    """One blocking XREAD over the followed turns of one group."""

    __slots__ = ("blocked_id", "group", "loop", "mirrors", "unblocking", "wake")

    def __init__(self, group: str) -> None:
        self.group = group
        self.mirrors: dict[str, _Mirror] = {}
        self.blocked_id: int | None = None  # its connection's id while it blocks
        self.unblocking = False
        self.loop: gevent.Greenlet | None = None
        self.wake = gevent.event.Event()  # set when an idle reader gets a turn


class Follower:
    """One XREAD per worker (per tag on Cluster) for the turns read from elsewhere."""

    def __init__(self, client: Client, *, stream_ttl: float, orphan: float):
        self._r: Any = client
        self.stream_ttl = stream_ttl
        self.orphan = orphan
        self._cluster = is_cluster(client)
        self._mirrors: dict[str, _Mirror] = {}
        self._readers: dict[str, _Reader] = {}
        self._chores_loop: gevent.Greenlet | None = None

    def open(self, turn_id: str) -> Tail | None:
        """Join the readers of a turn produced elsewhere, catching up first."""
        mirror = self._mirrors.get(turn_id)
        if mirror is None:
            key = _key(turn_id)
            with guard("read turn"):
                entries = self._r.xrange(key, "-", "+")
            if not entries:
                return None
            mirror = self._mirrors.get(turn_id)  # another reader came meanwhile
            if mirror is None:
                frames = [f for _, fields in entries for f in _split(fields[b"f"])]
                tail = Tail(frames, done=sse.is_done(frames[-1]))
                group = turn_tag(turn_id) if self._cluster else ""
                mirror = _Mirror(key, group, tail, entries[0][1][b"w"].decode())
                if not tail.done:
                    self._follow(turn_id, mirror)
        mirror.tail.join()
        return mirror.tail

    def drop(self, turn_id: str, tail: Tail) -> None:
        """Stop following a turn nobody here reads any more."""
        mirror = self._mirrors.get(turn_id)
        if mirror is not None and mirror.tail is tail:
            self._forget(turn_id, mirror)

    def _forget(self, turn_id: str, mirror: _Mirror) -> None:
        if self._mirrors.get(turn_id) is mirror:
            del self._mirrors[turn_id]
        reader = self._readers.get(mirror.group)
        if reader is not None and reader.mirrors.get(turn_id) is mirror:
            del reader.mirrors[turn_id]

    def _follow(self, turn_id: str, mirror: _Mirror) -> None:
        with guard("mark reader"):
            self._r.set(mirror.key + ":reader", "1", px=int(self.orphan * 1000))
        self._mirrors[turn_id] = mirror
        if self._chores_loop is None or self._chores_loop.dead:
            self._chores_loop = gevent.spawn(self._run_chores)
        reader = self._readers.get(mirror.group)
        if reader is None or reader.loop is None or reader.loop.dead:
            reader = self._readers[mirror.group] = _Reader(mirror.group)
            reader.mirrors[turn_id] = mirror
            reader.loop = gevent.spawn(self._run, reader)
            return
        reader.mirrors[turn_id] = mirror
        reader.wake.set()
        if reader.blocked_id is not None and not reader.unblocking:
            # The XREAD in flight does not name this turn yet: end its wait.
            reader.unblocking = True
            try:
                node_client(self._r, mirror.key).client_unblock(reader.blocked_id)
            except redis.RedisError:
                pass  # the read ends by itself within BLOCK_MS

    def _run(self, reader: _Reader) -> None:
        conn: Any = None
        failing_since: float | None = None
        try:
            while reader.mirrors or self._idle(reader):
                try:
                    if conn is None:
                        conn = self._connection(next(iter(reader.mirrors.values())))
                    self._read(conn, reader)
                    failing_since = None
                except redis.RedisError as exc:
                    if conn is not None:
                        conn.disconnect()
                    conn = None
                    reader.blocked_id = None
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since >= STORE_GRACE:
                        log.warning("follower: Redis is away (%s)", type(exc).__name__)
                        for turn_id, mirror in list(reader.mirrors.items()):
                            mirror.tail.lose()
                            self._forget(turn_id, mirror)
                    gevent.sleep(0.2)
                    try:
                        refresh(self._r)  # a failover may have moved the slot
                    except redis.RedisError:
                        pass
                    continue
                gevent.sleep(GATHER_SECONDS)
        finally:
            if conn is not None:
                conn.disconnect()
            if self._readers.get(reader.group) is reader:
                del self._readers[reader.group]

    @staticmethod
    def _idle(reader: _Reader) -> bool:
        """Wait, connection kept, for a next turn: whether one came.

        Turns come and go all the time; a new connection each time the last
        one ends would cost a connect, a handshake and CLIENT ID.
        """
        reader.wake.clear()
        reader.wake.wait(IDLE_SECONDS)
        return bool(reader.mirrors)

    def _connection(self, mirror: _Mirror) -> Any:
        """Open a connection of our own to the primary holding `mirror`'s turn."""
        pool = node_client(self._r, mirror.key).connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = BLOCK_MS / 1000 + 5
        conn = pool.connection_class(**kwargs)
        conn.connect()
        conn.send_command("CLIENT", "ID")
        conn.client_id = int(conn.read_response())
        return conn

    def _read(self, conn: Any, reader: _Reader) -> None:
        mirrors = {m.key: (t, m) for t, m in reader.mirrors.items()}
        keys = list(mirrors)
        ids = [f"{len(m.tail.frames)}-0" for _, m in mirrors.values()]
        conn.send_command("XREAD", "BLOCK", BLOCK_MS, "STREAMS", *keys, *ids)
        reader.blocked_id = conn.client_id
        reader.unblocking = False
        try:
            reply = conn.read_response()
        finally:
            reader.blocked_id = None
        now = time.monotonic()
        for raw_key, entries in _streams(reply):
            found = mirrors.get(raw_key.decode())
            if found is None:
                continue
            turn_id, mirror = found
            frames: list[bytes] = []
            for _, fields in entries:
                frames.extend(_split(_fields(fields)[b"f"]))
            if not frames:
                continue
            done = sse.is_done(frames[-1])
            mirror.tail.extend(frames, done=done)
            mirror.heard_at = now
            if done:
                self._forget(turn_id, mirror)

    def _run_chores(self) -> None:
        while self._mirrors:
            try:
                self._chores(time.monotonic())
            except redis.RedisError as exc:
                log.warning("follower: chores failed (%s)", type(exc).__name__)
            gevent.sleep(min(1.0, self.orphan / 3))

    def _chores(self, now: float) -> None:
        """Tell producers readers are here; end turns whose producer died."""
        followed = list(self._mirrors.items())
        with self._r.pipeline(transaction=False) as pipe:
            for _, mirror in followed:
                if mirror.tail.readers > 0:
                    pipe.set(mirror.key + ":reader", "1", px=int(self.orphan * 1000))
            pipe.execute()
        quiet = [(t, m) for t, m in followed if now - m.heard_at >= LEASE_CHECK_AFTER]
        if not quiet:
            return
        workers = sorted({m.worker for _, m in quiet})
        with self._r.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.exists(_worker_key(worker))
            alive = dict(zip(workers, pipe.execute(), strict=True))
        for turn_id, mirror in quiet:
            if not alive[mirror.worker]:
                self._reap(turn_id, mirror)

    def _reap(self, turn_id: str, mirror: _Mirror) -> None:
        """End a dead producer's turn with error + done, once, for everyone."""
        if not self._r.set(mirror.key + ":reaped", "1", nx=True, ex=60):
            return  # another worker does it; its entry reaches us as usual
        last = len(mirror.tail.frames)
        frames = [
            sse.frame(last + 1, "error", REAPED_ERROR),
            sse.frame(last + 2, "done", {"finish_reason": "error"}),
        ]
        with self._r.pipeline(transaction=False) as pipe:
            pipe.xadd(mirror.key, {"f": b"".join(frames)}, id=f"{last + 2}-0")
            pipe.expire(mirror.key, int(self.stream_ttl) + 1)
            pipe.execute()
        log.warning("turn %s: its producer %s stopped", turn_id, mirror.worker)


def _streams(reply: Any) -> list[tuple[bytes, list[Any]]]:
    """Read an XREAD reply (RESP2 list or RESP3 map) as (key, entries) pairs."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    return [(item[0], item[1]) for item in reply]


def _fields(raw: Any) -> dict[bytes, bytes]:
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))
