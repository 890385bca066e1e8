"""One contract, two turn logs: in memory and on a real redis-server.

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
from chatapp.store.events import MemoryEventLog
from chatapp.store.events_redis import RedisEventLog
from chatapp.store.events_redis import turn_tag
from chatapp.store.redis import connect
from chatapp.store.tail import Tail
from chatapp.turns.model import TurnInfo


class Backend:
    """A turn log as its producer writes it and as a reader elsewhere reads it."""

    def __init__(self, name: str, writer: Any, reader: Any, history: Any) -> None:
        self.name = name
        self.writer = writer
        self.reader = reader
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


def redis_log(client: Any, orphan: float = 30) -> RedisEventLog:
    return RedisEventLog(client, running_ttl=60, stream_ttl=60, orphan=orphan)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        log = MemoryEventLog()
        yield Backend("memory", log, log, MemoryHistory(60))
        return
    url = request.getfixturevalue("redis_url")
    a, b = connect(url, 20), connect(url, 20)
    yield Backend("redis", redis_log(a), redis_log(b), RedisHistory(a, 60))
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

    def test_cancel_is_announced_to_the_producer(self, backend: Backend) -> None:
        heard: list[str] = []
        announced = threading.Event()

        def listener(turn_id: str) -> None:
            heard.append(turn_id)
            announced.set()

        backend.writer.on_cancel(listener)
        produced(backend)
        assert backend.writer.cancels_requested(["turn-0001"]) == [False]
        if backend.name == "redis":
            gevent.sleep(0.3)  # let the subscriber greenlet subscribe
        backend.reader.request_cancel("turn-0001")
        assert backend.writer.cancels_requested(["turn-0001"]) == [True]
        assert until(announced.is_set, 3)
        assert heard == ["turn-0001"]


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
    writer, reader = redis_log(a), redis_log(b, orphan=0.3)
    produced(Backend("redis", writer, reader, None))
    assert writer.readers_elsewhere(["turn-0001"]) == [False]
    tail = reader.open("turn-0001")
    assert tail is not None
    assert writer.readers_elsewhere(["turn-0001"]) == [True]
    reader.close("turn-0001", tail)
    assert until(lambda: writer.readers_elsewhere(["turn-0001"]) == [False], 3)


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


def test_redis_dead_producer_is_reaped_for_readers_elsewhere(redis_url: str) -> None:
    a, b = connect(redis_url, 5), connect(redis_url, 5)
    writer, reader = redis_log(a), redis_log(b)
    writer.renew_lease(0.3)
    backend = Backend("redis", writer, reader, None)
    produced(backend, deltas(2, 3), turn_id="turn-dead-1")
    tail = reader.open("turn-dead-1")
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
