"""Every Redis store call, with its redis-server stopped: a StoreError, never
a raw redis error, so turns/ has one failure to handle."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from chatapp.errors import StoreError
from chatapp.store.limits import Hold
from chatapp.store.limits import RedisLimitStore
from chatapp.store.redis import connect
from chatapp.store.spend import Ask
from chatapp.store.spend import Periods
from chatapp.store.spend import RedisSpendStore
from chatapp.store.spend import Settlement
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis

PERIODS = Periods("20260101", "202601", 86400, 86400 * 31)
ASK = Ask("m", 10, "f", 5, (100, 1000), (0, 0))
HOLD = Hold("ip:192.0.2.1", "turn-0001", "20260101", 100)


def alive(workers: list[str]) -> list[bool]:
    return [False] * len(workers)


def settle(hold: Hold) -> None:
    raise AssertionError("nothing to settle: Redis is away")


LIMITS: dict[str, Callable[[RedisLimitStore], Any]] = {
    "take_slot": lambda s: s.take_slot("c", "w/t", 2, 60),
    "free_slot": lambda s: s.free_slot("c", "w/t"),
    "hold_tokens": lambda s: s.hold_tokens("c", "20260101", 10, 100),
    "add_tokens": lambda s: s.add_tokens("c", "20260101", -10),
    "free_dead_slots": lambda s: s.free_dead_slots("c", alive),
    "record_hold": lambda s: s.record_hold("w", "w/t", HOLD),
    "forget_hold": lambda s: s.forget_hold("w", "w/t"),
    "reclaim": lambda s: s.reclaim(alive, settle),
}
SPEND: dict[str, Callable[[RedisSpendStore], Any]] = {
    "reserve": lambda s: s.reserve(PERIODS, ASK, Settlement()),
    "settle": lambda s: s.reserve(PERIODS, None, Settlement(used=-5)),
    "totals": lambda s: s.totals(PERIODS),
    "claim_alert": lambda s: s.claim_alert("day:80", 60),
}


@pytest.fixture(scope="module")
def stopped() -> Iterator[redis.Redis]:
    """A client of a redis-server that answered once and then stopped."""
    server = RedisServer()
    server.start()
    client = connect(server.url, 4)
    assert isinstance(client, redis.Redis)
    client.ping()
    server.kill()
    yield client
    client.close()
    shutil.rmtree(server.dir, ignore_errors=True)


def assert_store_error(call: Callable[[], Any]) -> None:
    with pytest.raises(StoreError) as raised:
        call()
    assert isinstance(raised.value.__cause__, redis.RedisError)


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_the_limit_store_raises_store_error(name: str, stopped: redis.Redis) -> None:
    store = RedisLimitStore(stopped)
    assert_store_error(lambda: LIMITS[name](store))


@pytest.mark.parametrize("name", sorted(SPEND))
def test_the_spend_store_raises_store_error(name: str, stopped: redis.Redis) -> None:
    store = RedisSpendStore(stopped)
    assert_store_error(lambda: SPEND[name](store))
