"""Following turns produced elsewhere: one blocking XREAD per worker.

One greenlet per worker (the Follower) blocks in a single XREAD over every
turn its readers follow, on a connection of its own, and extends one tail
per turn that all of those readers share. On Cluster one XREAD may only
name keys of one slot, so the follower keeps one such reader per tag, each
on a connection to the primary of that tag's slot: at most 16.

While it follows a turn it marks it read (coordination), so the producer
does not cancel it as an orphan; a turn silent for LEASE_CHECK_AFTER has its
producer's lease checked, and a dead producer's turn is ended with error and
done, by one worker for everyone.

Every Redis failure of `open` leaves this module as StoreError; the
greenlets log failures and, after STORE_GRACE, give followed turns up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import gevent.event
import redis

from chatapp import sse
from chatapp.errors import StoreError
from chatapp.store.coordination import Coordination
from chatapp.store.layout_redis import fields
from chatapp.store.layout_redis import split
from chatapp.store.layout_redis import streams
from chatapp.store.layout_redis import turn_key
from chatapp.store.layout_redis import turn_tag
from chatapp.store.redis import Client
from chatapp.store.redis import guard
from chatapp.store.redis_cluster import is_cluster
from chatapp.store.redis_cluster import node_client
from chatapp.store.redis_cluster import refresh
from chatapp.store.redis_cluster import slot_pipeline
from chatapp.store.tail import Tail

log = logging.getLogger(__name__)

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
# A dead producer's turn is claimed by one worker for this long.
REAP_CLAIM_SECONDS = 60

REAPED_ERROR = {
    "code": "internal",
    "message": "The server running this answer stopped.",
    "retryable": True,
}


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

    def __init__(
        self,
        client: Client,
        coordination: Coordination,
        *,
        stream_ttl: float,
        orphan: float,
    ) -> None:
        self._r: Any = client
        self._coordination = coordination
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
            key = turn_key(turn_id)
            with guard("read turn"):
                entries = self._r.xrange(key, "-", "+")
            if not entries:
                return None
            mirror = self._mirrors.get(turn_id)  # another reader came meanwhile
            if mirror is None:
                frames = [f for _, raw in entries for f in split(raw[b"f"])]
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
        self._coordination.mark_readers([turn_id], self.orphan)
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
        for raw_key, entries in streams(reply):
            found = mirrors.get(raw_key.decode())
            if found is None:
                continue
            turn_id, mirror = found
            frames: list[bytes] = []
            for _, raw in entries:
                frames.extend(split(fields(raw)[b"f"]))
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
            except StoreError as exc:
                log.warning("follower: chores failed (%s)", exc)
            gevent.sleep(min(1.0, self.orphan / 3))

    def _chores(self, now: float) -> None:
        """Tell producers readers are here; end turns whose producer died."""
        followed = list(self._mirrors.items())
        read = [t for t, m in followed if m.tail.readers > 0]
        self._coordination.mark_readers(read, self.orphan)
        quiet = [(t, m) for t, m in followed if now - m.heard_at >= LEASE_CHECK_AFTER]
        if not quiet:
            return
        workers = sorted({m.worker for _, m in quiet})
        up = self._coordination.workers_alive(workers)
        alive = dict(zip(workers, up, strict=True))
        for turn_id, mirror in quiet:
            if not alive[mirror.worker]:
                self._reap(turn_id, mirror)

    def _reap(self, turn_id: str, mirror: _Mirror) -> None:
        """End a dead producer's turn with error + done, once, for everyone."""
        if not self._coordination.claim_reap(turn_id, REAP_CLAIM_SECONDS):
            return  # another worker does it; its entry reaches us as usual
        last = len(mirror.tail.frames)
        frames = [
            sse.frame(last + 1, "error", REAPED_ERROR),
            sse.frame(last + 2, "done", {"finish_reason": "error"}),
        ]
        key = mirror.key
        with guard("end a dead producer's turn"), slot_pipeline(self._r, key) as pipe:
            pipe.xadd(key, {"f": b"".join(frames)}, id=f"{last + 2}-0")
            pipe.expire(key, int(self.stream_ttl) + 1)
            pipe.execute()
        log.warning("turn %s: its producer %s stopped", turn_id, mirror.worker)
