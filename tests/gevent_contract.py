"""One contract, two backends: the turn log and coordination, in memory and
on a real redis-server.

Run by test_streams_contract.py in a gevent-patched subprocess, as the service
runs, so that blocking Redis reads and greenlets interleave as in production.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import pytest

from chatapp import sse
from chatapp.errors import StoreError
from chatapp.store.conversations import MemoryHistory
from chatapp.store.conversations import StoredMessage
from chatapp.store.conversations_redis import RedisHistory
from chatapp.store.coordination import Coordination
from chatapp.store.coordination import MemoryCoordination
from chatapp.store.coordination_redis import RedisCoordination
from chatapp.store.events import EventLog
from chatapp.store.events import MemoryEventLog
from chatapp.store.events_redis import RedisEventLog
from chatapp.store.layout_redis import turn_tag
from chatapp.store.redis import connect
from chatapp.store.tail import Tail
from chatapp.turns.model import TurnInfo


class Backend:
    """A turn log and coordination as the producer's worker and another see them.

    In memory both are this process; on Redis, two workers with a client each.
    """

    def __init__(
        self,
        name: str,
        writer: tuple[EventLog, Coordination],
        reader: tuple[EventLog, Coordination],
        history: Any,
    ) -> None:
        self.name = name
        self.writer, self.here = writer
        self.reader, self.there = reader
        self.history = history


REDIS_URL = os.environ.get("CHATAPP_TEST_REDIS_URL", "")


@pytest.fixture
def redis_url() -> str:
    if not REDIS_URL:
        pytest.fail(
            "run through test_streams_contract.py (needs CHATAPP_TEST_REDIS_URL)"
        )
    import redis

    redis.Redis.from_url(REDIS_URL).flushall()
    return REDIS_URL


def redis_worker(
    client: Any, orphan: float = 30
) -> tuple[RedisEventLog, RedisCoordination]:
    coordination = RedisCoordination(client, cancel_ttl=60)
    log = RedisEventLog(client, coordination, stream_ttl=60, orphan=orphan)
    return log, coordination


def redis_log(client: Any, orphan: float = 30) -> RedisEventLog:
    return redis_worker(client, orphan)[0]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        log = MemoryEventLog()
        worker = (log, MemoryCoordination(log))
        yield Backend("memory", worker, worker, MemoryHistory(60))
        return
    url = request.getfixturevalue("redis_url")
    a, b = connect(url, 20), connect(url, 20)
    yield Backend("redis", redis_worker(a), redis_worker(b), RedisHistory(a, 60))
    a.close()
    b.close()


def info(turn_id: str = "turn-0001") -> TurnInfo:
    return TurnInfo(turn_id, "v:owner", "conv-0001", 1_700_000_000.5)


def start(n: int = 1) -> bytes:
    return sse.frame(n, "start", {"id": "turn-0001"})


def deltas(first: int, last: int) -> list[bytes]:
    return [sse.delta(i, str(i)) for i in range(first, last + 1)]


def done(n: int) -> bytes:
    return sse.frame(n, "done", {"finish_reason": "stop"})


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.01)
    return True


def produced(
    backend: Backend, *batches: list[bytes], turn_id: str = "turn-0001"
) -> Tail:
    tail = backend.writer.create(info(turn_id), start(), 60)
    for batch in batches:
        backend.writer.append(turn_id, tail, batch)
    return tail


class TestEventLogContract:
    def test_unknown_turn_is_none(self, backend: Backend) -> None:
        assert backend.reader.info("nope-nope") is None
        assert backend.reader.open("nope-nope") is None

    def test_create_then_info_round_trips(self, backend: Backend) -> None:
        produced(backend)
        assert backend.reader.info("turn-0001") == info()

    def test_a_reader_anywhere_gets_every_frame_in_order(
        self, backend: Backend
    ) -> None:
        produced(backend, deltas(2, 4), deltas(5, 7))
        tail = backend.reader.open("turn-0001")
        assert tail is not None
        assert until(lambda: len(tail.frames) == 7)
        assert tail.frames == [start(), *deltas(2, 7)]
        assert not tail.done
        backend.reader.close("turn-0001", tail)

    def test_a_follower_wakes_as_soon_as_frames_are_written(
        self, backend: Backend
    ) -> None:
        writer_tail = produced(backend)
        tail = backend.reader.open("turn-0001")
        assert tail is not None
        gevent.spawn_later(
            0.05, backend.writer.append, "turn-0001", writer_tail, deltas(2, 2)
        )
        started = time.monotonic()
        tail.wait(5.0)
        assert until(lambda: len(tail.frames) == 2, 1.0)
        assert time.monotonic() - started < 1.5  # woke on the write
        backend.reader.close("turn-0001", tail)

    def test_finish_ends_with_done_and_expires_after_ttl(
        self, backend: Backend
    ) -> None:
        tail = produced(backend, deltas(2, 3))
        backend.writer.finish("turn-0001", tail, [done(4)], 1)
        read = backend.reader.open("turn-0001")
        assert read is not None
        assert until(lambda: read.done)
        assert read.frames == [start(), *deltas(2, 3), done(4)]
        backend.reader.close("turn-0001", read)
        assert until(lambda: backend.reader.info("turn-0001") is None, 5)
        assert backend.reader.open("turn-0001") is None


class TestCoordinationContract:
    def test_cancel_is_announced_to_the_producer(self, backend: Backend) -> None:
        heard: list[str] = []
        announced = threading.Event()

        def listener(turn_id: str) -> None:
            heard.append(turn_id)
            announced.set()

        backend.here.on_cancel(listener)
        produced(backend)
        assert backend.here.cancels_requested(["turn-0001"]) == [False]
        if backend.name == "redis":
            gevent.sleep(0.3)  # let the subscriber greenlet subscribe
        backend.there.request_cancel("turn-0001")
        assert backend.here.cancels_requested(["turn-0001"]) == [True]
        assert until(announced.is_set, 3)
        assert heard == ["turn-0001"]

    def test_a_readers_mark_is_seen_until_it_lapses(self, backend: Backend) -> None:
        turns = ["turn-0001", "turn-0002"]
        assert backend.here.readers_elsewhere(turns) == [False, False]
        backend.there.mark_readers([], 1)  # nothing to mark is no call
        backend.there.mark_readers(["turn-0001"], 0.3)
        assert backend.here.readers_elsewhere(turns) == [True, False]
        assert until(lambda: backend.here.readers_elsewhere(turns) == [False] * 2, 3)
        assert backend.here.readers_elsewhere([]) == []

    def test_a_lease_says_a_worker_lives_until_it_lapses(
        self, backend: Backend
    ) -> None:
        workers = [backend.here.worker, "elsewhere:1:000000"]
        assert backend.there.workers_alive(workers) == [False, False]
        backend.here.renew_lease(0.3)
        assert backend.there.workers_alive(workers) == [True, False]
        assert until(lambda: backend.there.workers_alive(workers) == [False] * 2, 3)
        assert backend.there.workers_alive([]) == []

    def test_a_dead_producers_turn_is_claimed_once(self, backend: Backend) -> None:
        assert backend.here.claim_reap("turn-0001", 60)
        assert not backend.there.claim_reap("turn-0001", 60)
        assert backend.there.claim_reap("turn-0002", 60)

    def test_streamed_chars_count_the_answer_text_only(self, backend: Backend) -> None:
        tail = backend.writer.create(info(), start(), 60)
        thinking = sse.frame(3, "status", {"state": "thinking"})
        backend.writer.append("turn-0001", tail, [sse.delta(2, "héllo"), thinking])
        final = [sse.delta(4, " world ✓"), done(5)]
        backend.writer.finish("turn-0001", tail, final, 60)
        assert backend.there.streamed_chars("turn-0001") == len("héllo world ✓")
        assert backend.there.streamed_chars("nope-nope") == 0

    def test_a_cancel_is_kept_for_a_turn_nobody_runs(self, backend: Backend) -> None:
        backend.there.request_cancel("turn-elsewhere")
        asked = backend.here.cancels_requested(["turn-elsewhere", "turn-0001"])
        assert asked == [True, False]
        assert backend.here.cancels_requested([]) == []


class TestHistoryContract:
    def test_conversation_belongs_to_its_owner(self, backend: Backend) -> None:
        history = backend.history
        assert history.owner("conv-1") is None
        first = StoredMessage("user", "hi", 1.0)
        history.create("conv-1", "v:alice", first)
        assert history.owner("conv-1") == "v:alice"
        assert history.messages("conv-1") == [first]

    def test_messages_keep_their_order(self, backend: Backend) -> None:
        history = backend.history
        said = [
            StoredMessage("user", "hi\nthere", 1.5),
            StoredMessage("assistant", "hello ✓", 2.5),
        ]
        history.create("conv-1", "v:alice", said[0])
        history.append("conv-1", said[1])
        assert history.messages("conv-1") == said

    def test_a_long_conversation_keeps_its_owner_and_newest(
        self, backend: Backend
    ) -> None:
        history = type(backend.history)(
            backend.history._r if backend.name == "redis" else 60,  # noqa: SLF001
            *([60] if backend.name == "redis" else []),
            max_messages=3,
        )
        history.create("conv-2", "v:bob", StoredMessage("user", "0", 0.0))
        for n in range(1, 6):
            history.append("conv-2", StoredMessage("user", str(n), float(n)))
        assert [m.content for m in history.messages("conv-2")] == ["3", "4", "5"]
        assert history.owner("conv-2") == "v:bob"

    def test_idempotency_key_is_claimed_once(self, backend: Backend) -> None:
        history = backend.history
        assert history.claim_idempotency("k1", "first", 60) is None
        assert history.claim_idempotency("k1", "second", 60) == "first"
        assert history.claim_idempotency("k2", "other", 60) is None


def test_redis_readers_elsewhere_are_seen_until_their_ttl(redis_url: str) -> None:
    a, b = connect(redis_url, 5), connect(redis_url, 5)
    writer, reader = redis_worker(a), redis_worker(b, orphan=0.3)
    backend = Backend("redis", writer, reader, None)
    produced(backend)
    assert backend.here.readers_elsewhere(["turn-0001"]) == [False]
    tail = backend.reader.open("turn-0001")
    assert tail is not None
    assert backend.here.readers_elsewhere(["turn-0001"]) == [True]
    backend.reader.close("turn-0001", tail)
    assert until(lambda: backend.here.readers_elsewhere(["turn-0001"]) == [False], 3)


def test_redis_writes_in_a_window_share_one_entry(redis_url: str) -> None:
    client = connect(redis_url, 5)
    writer = redis_log(client)
    tail = writer.create(info(), start(), 60)
    for n in range(2, 12):
        writer.append("turn-0001", tail, [sse.delta(n, str(n))])
    writer.finish("turn-0001", tail, [done(12)], 60)
    # The first delta goes out at once, the rest in the window, then the end.
    assert client.xlen(f"chatapp:t:{{{turn_tag('turn-0001')}}}:turn-0001") <= 4
    read = redis_log(connect(redis_url, 5)).open("turn-0001")
    assert read is not None and read.done
    assert read.frames == [start(), *deltas(2, 11), done(12)]


def test_redis_done_reaches_readers_here_only_once_it_is_shared(
    redis_url: str,
) -> None:
    # A client that got `done` here may ask any other host at once (a poll,
    # a resume): the whole turn must be in Redis by then, even while the
    # window's batched write holds the turn's outbox.
    writer = redis_log(connect(redis_url, 5))
    tail = writer.create(info(), start(), 60)
    writer.append("turn-0001", tail, [sse.delta(2, "2")])
    seen: list[bool] = []

    def reader_here() -> None:
        while not tail.done:
            tail.wait(5.0)
        there = redis_log(connect(redis_url, 5)).open("turn-0001")
        seen.append(there is not None and there.done)

    reader = gevent.spawn(reader_here)
    outbox = writer._local["turn-0001"][2].lock
    outbox.acquire()  # a batched write in flight
    finisher = gevent.spawn(writer.finish, "turn-0001", tail, [done(3)], 60)
    gevent.idle()  # every greenlet has run as far as it can
    outbox.release()
    gevent.joinall([finisher, reader], timeout=10, raise_error=True)
    assert seen == [True]
    assert tail.frames == [start(), sse.delta(2, "2"), done(3)]


def test_redis_dead_producer_is_reaped_for_readers_elsewhere(redis_url: str) -> None:
    a, b = connect(redis_url, 5), connect(redis_url, 5)
    backend = Backend("redis", redis_worker(a), redis_worker(b), None)
    backend.here.renew_lease(0.3)
    produced(backend, deltas(2, 3), turn_id="turn-dead-1")
    tail = backend.reader.open("turn-dead-1")
    assert tail is not None
    # The lease lapses and nothing more is written: readers get error + done.
    assert until(lambda: tail.done, 20)
    assert [sse.parse(f)[1] for f in tail.frames[-2:]] == ["error", "done"]
    assert [sse.parse(f)[0] for f in tail.frames] == [1, 2, 3, 4, 5]


def test_redis_outage_raises_store_error() -> None:
    from tests.conftest import free_port

    log = redis_log(connect(f"redis://127.0.0.1:{free_port()}/0", 5))
    with pytest.raises(StoreError):
        log.info("turn-0001")
    with pytest.raises(StoreError):
        log.ping()


def test_many_readers_of_one_tail_all_wake_on_one_write() -> None:
    log = MemoryEventLog()
    tail = log.create(info(), start(), 60)
    woke: list[int] = []
    readers = [
        gevent.spawn(lambda: (tail.wait(5), woke.append(len(tail.frames))))
        for _ in range(50)
    ]
    gevent.sleep(0)
    log.append("turn-0001", tail, deltas(2, 2))
    gevent.joinall(readers, timeout=5)
    assert woke == [2] * 50
