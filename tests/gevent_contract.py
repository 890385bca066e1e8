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

from chatapp.history import MemoryHistory
from chatapp.history import StoredMessage
from chatapp.redis_store import RedisHistory
from chatapp.redis_store import RedisTurnLog
from chatapp.redis_store import connect
from chatapp.streams import Event
from chatapp.streams import MemoryTurnLog
from chatapp.streams import TurnInfo


class Backend:
    """A turn log plus a way to run something a little later, concurrently."""

    def __init__(self, name: str, log: Any, history: Any, later: Callable[..., None]):
        self.name = name
        self.log = log
        self.history = history
        self.later = later


def _later(delay: float, fn: Callable[[], None]) -> None:
    gevent.spawn_later(delay, fn)


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


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield Backend("memory", MemoryTurnLog(), MemoryHistory(60), _later)
        return
    client = connect(request.getfixturevalue("redis_url"), 20)
    yield Backend("redis", RedisTurnLog(client, 60), RedisHistory(client, 60), _later)
    client.close()


def info(turn_id: str = "turn-0001") -> TurnInfo:
    return TurnInfo(turn_id, "v:owner", "conv-0001", 1_700_000_000.5)


def events(first: int, last: int) -> list[Event]:
    return [Event(i, "delta", f'{{"text":"{i}"}}') for i in range(first, last + 1)]


class TestTurnLogContract:
    def test_unknown_turn_is_none(self, backend: Backend) -> None:
        assert backend.log.info("nope-nope") is None
        assert backend.log.read("nope-nope", 0, 0) is None
        assert backend.log.done_id("nope-nope") is None

    def test_create_then_info_round_trips(self, backend: Backend) -> None:
        backend.log.create(info(), 60)
        assert backend.log.info("turn-0001") == info()

    def test_read_from_any_id_returns_only_later_events(self, backend: Backend) -> None:
        log = backend.log
        log.create(info(), 60)
        log.append("turn-0001", events(1, 3))
        log.append("turn-0001", events(4, 6))
        assert log.read("turn-0001", 0, 0) == events(1, 6)
        assert log.read("turn-0001", 4, 0) == events(5, 6)
        assert log.read("turn-0001", 6, 0) == []

    def test_read_wakes_as_soon_as_an_event_is_written(self, backend: Backend) -> None:
        log = backend.log
        log.create(info(), 60)
        log.append("turn-0001", events(1, 1))
        backend.later(0.05, lambda: log.append("turn-0001", events(2, 2)))
        started = time.monotonic()
        got = log.read("turn-0001", 1, 5.0)
        assert got == events(2, 2)
        assert time.monotonic() - started < 2.5  # woke on the write, not the timeout

    def test_read_times_out_empty(self, backend: Backend) -> None:
        backend.log.create(info(), 60)
        backend.log.append("turn-0001", events(1, 1))
        assert backend.log.read("turn-0001", 1, 0.05) == []

    def test_finish_records_done_and_expires_after_ttl(self, backend: Backend) -> None:
        log = backend.log
        log.create(info(), 60)
        log.append("turn-0001", [*events(1, 2), Event(3, "done", "{}")])
        log.finish("turn-0001", 3, 1)
        assert log.done_id("turn-0001") == 3
        deadline = time.monotonic() + 5
        while log.info("turn-0001") is not None and time.monotonic() < deadline:
            gevent.sleep(0.1)
        assert log.info("turn-0001") is None
        assert log.read("turn-0001", 0, 0) is None

    def test_cancel_is_seen_and_announced(self, backend: Backend) -> None:
        log = backend.log
        heard: list[str] = []
        announced = threading.Event()

        def listener(turn_id: str) -> None:
            heard.append(turn_id)
            announced.set()

        log.on_cancel(listener)
        log.create(info(), 60)
        assert not log.cancel_requested("turn-0001")
        if backend.name == "redis":
            gevent.sleep(0.3)  # let the subscriber greenlet subscribe
        log.request_cancel("turn-0001")
        assert log.cancel_requested("turn-0001")
        deadline = time.monotonic() + 3
        while not announced.is_set() and time.monotonic() < deadline:
            gevent.sleep(0.02)
        assert heard == ["turn-0001"]
        assert log.pulse(["turn-0001"], 4)[0].cancel is True

    def test_pulse_reports_readers_until_their_ttl_passes(
        self, backend: Backend
    ) -> None:
        log = backend.log
        log.create(info(), 60)
        assert log.pulse(["turn-0001"], 4)[0].readers is False
        log.touch_reader("turn-0001", 0.3)
        assert log.pulse(["turn-0001"], 4)[0].readers is True
        deadline = time.monotonic() + 3
        while log.pulse(["turn-0001"], 4)[0].readers and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert log.pulse(["turn-0001"], 4)[0].readers is False


class TestHistoryContract:
    def test_conversation_belongs_to_its_owner(self, backend: Backend) -> None:
        history = backend.history
        assert history.owner("conv-1") is None
        history.create("conv-1", "v:alice")
        assert history.owner("conv-1") == "v:alice"
        assert history.messages("conv-1") == []

    def test_messages_keep_their_order(self, backend: Backend) -> None:
        history = backend.history
        history.create("conv-1", "v:alice")
        said = [
            StoredMessage("user", "hi\nthere", 1.5),
            StoredMessage("assistant", "hello ✓", 2.5),
        ]
        for message in said:
            history.append("conv-1", message)
        assert history.messages("conv-1") == said

    def test_idempotency_key_is_claimed_once(self, backend: Backend) -> None:
        history = backend.history
        assert history.claim_idempotency("k1", "first", 60) is None
        assert history.claim_idempotency("k1", "second", 60) == "first"
        assert history.claim_idempotency("k2", "other", 60) is None


def test_redis_lease_marks_a_live_producer(redis_url: str) -> None:
    client = connect(redis_url, 5)
    log = RedisTurnLog(client, 60)
    log.create(info(), 60)
    assert log.producer_alive("turn-0001") is False
    log.pulse(["turn-0001"], 0.3)
    assert log.producer_alive("turn-0001") is True
    deadline = time.monotonic() + 3
    while log.producer_alive("turn-0001") and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert log.producer_alive("turn-0001") is False
    log.append("turn-0001", events(1, 4))
    assert log.claim_reap("turn-0001") == 4
    assert log.claim_reap("turn-0001") is None  # one reaper only
    client.close()


def test_memory_log_never_reaps_its_own_process() -> None:
    log = MemoryTurnLog()
    log.create(info(), 60)
    assert log.producer_alive("turn-0001") is True
    assert log.claim_reap("turn-0001") is None


def test_redis_outage_raises_store_error() -> None:
    from chatapp.errors import StoreError
    from tests.conftest import free_port

    client = connect(f"redis://127.0.0.1:{free_port()}/0", 5)
    log = RedisTurnLog(client, 60)
    with pytest.raises(StoreError):
        log.info("turn-0001")
    with pytest.raises(StoreError):
        log.ping()


def test_done_event_handling_unaffected_by_gevent_event_reuse() -> None:
    # Many readers waiting on one memory turn all wake on one append.
    log = MemoryTurnLog()
    log.create(info(), 60)
    results: list[Any] = []
    readers = [
        gevent.spawn(lambda: results.append(log.read("turn-0001", 0, 5)))
        for _ in range(50)
    ]
    gevent.sleep(0)
    log.append("turn-0001", events(1, 1))
    gevent.joinall(readers, timeout=5)
    assert results == [events(1, 1)] * 50
