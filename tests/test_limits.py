"""The limits' parts: who a client is, what a turn cost, the two stores, the gate."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import g
from flask_limiter import RateLimitExceeded

from chatapp import create_app
from chatapp.addresses import address_key
from chatapp.config import load_config
from chatapp.errors import ApiError
from chatapp.errors import ConfigError
from chatapp.store.limits import LimitStore
from chatapp.store.limits import MemoryLimitStore
from chatapp.store.limits import RedisLimitStore
from chatapp.store.redis import SOCKET_TIMEOUT as REDIS_TIMEOUT
from chatapp.store.redis import connect as connect_pool
from chatapp.tokens import Identity
from chatapp.turns.admit import Gate
from chatapp.turns.holds import seconds_to_utc_midnight
from chatapp.turns.holds import tokens_spent
from chatapp.turns.holds import utc_day
from chatapp.turns.model import TurnEnd as TurnOutcome
from chatapp.turns.model import TurnInfo
from chatapp.web.limiter import _hit_chat_limits
from chatapp.web.limiter import client_for
from chatapp.web.limiter import client_key
from tests.conftest import RedisServer
from tests.conftest import wait_for

# -- who a client is -------------------------------------------------------------------

ADDRESSES = [
    ("203.0.113.7", "ip:203.0.113.7"),
    # One /56 is one client, whichever of its 256 /64s it speaks from.
    ("2001:db8:1:2:3:4:5:6", "ip:2001:db8:1::/56"),
    ("2001:db8:1:ff:ffff::1", "ip:2001:db8:1::/56"),
    ("2001:db8:1:100::1", "ip:2001:db8:1:100::/56"),
    ("::ffff:198.51.100.4", "ip:198.51.100.4"),
    # A port, brackets or a zone, as some load balancers write them.
    ("203.0.113.7:51234", "ip:203.0.113.7"),
    ("[2001:db8:1::9]:443", "ip:2001:db8:1::/56"),
    ("[2001:db8:1::9]", "ip:2001:db8:1::/56"),
    ("[::ffff:198.51.100.4]:80", "ip:198.51.100.4"),
    ("fe80::1%eth0", "ip:fe80::/56"),
    (" 203.0.113.7 ", "ip:203.0.113.7"),
    # Whatever does not parse is one shared client, never its own text.
    ("not an address", "ip:unparsed"),
    ("203.0.113.7:", "ip:unparsed"),
    ("203.0.113.7:port", "ip:unparsed"),
    ("[2001:db8::1", "ip:unparsed"),
    ("[2001:db8::1]x", "ip:unparsed"),
    ("1" * 5000, "ip:unparsed"),
    ("", "ip:unparsed"),
    (None, "ip:unparsed"),
]


@pytest.mark.parametrize(("address", "key"), ADDRESSES)
def test_address_key(address: str | None, key: str) -> None:
    assert address_key(address) == key
    assert address_key(address) == key  # asked again: the recent keys


def test_recent_address_keys_stay_bounded() -> None:
    # Each one a new key, far more than are kept: none is mixed up with another.
    for n in range(1, 3000):
        address = f"2001:db8:{n:x}::1"
        assert address_key(address) == f"ip:2001:db8:{n:x}::/56"
    assert address_key("2001:db8:1::1") == "ip:2001:db8:1::/56"


@pytest.fixture
def app() -> Any:
    return create_app({"WP_SHARED_SECRET": "s" * 32})


def _key(app: Any, **request: Any) -> str:
    with app.test_request_context("/api/chat", method="POST", **request):
        return client_key()


def connect(url: str) -> redis.Redis:
    return connect_pool(url, 8)


def test_a_wordpress_user_is_the_client_wherever_they_are(app: Any) -> None:
    signer = app.extensions["chatapp"].signer
    user = Identity("v1", "42", "https://blog.example", "Ann")
    other_visit = signer.page_token(Identity("v2", "42", "https://blog.example"))
    owner = Identity("v1", "42", "https://blog.example").owner
    with app.test_request_context(environ_base={"REMOTE_ADDR": "192.0.2.1"}):
        from_the_view = client_for(user)
    assert (
        from_the_view
        == _key(
            app,
            headers={"X-Chat-Token": other_visit},
            environ_base={"REMOTE_ADDR": "192.0.2.99"},
        )
        == owner
    )


def test_the_key_function_never_reads_the_body(app: Any) -> None:
    signer = app.extensions["chatapp"].signer
    user = signer.page_token(Identity("v1", "42", "https://blog.example", "Ann"))
    visitor = signer.page_token(Identity("v1"))
    remote = {"REMOTE_ADDR": "192.0.2.1"}
    assert _key(app, json={"token": user}, environ_base=remote) == "ip:192.0.2.1"
    assert _key(app, json={"token": visitor}, environ_base=remote) == "ip:192.0.2.1"
    deep = {"data": "[" * 5000 + "]" * 5000, "content_type": "application/json"}
    assert _key(app, environ_base=remote, **deep) == "ip:192.0.2.1"


def test_a_visitor_or_a_bad_token_is_the_address(app: Any) -> None:
    visitor = app.extensions["chatapp"].signer.page_token(Identity("v1"))
    remote = {"REMOTE_ADDR": "192.0.2.1"}
    headers = {"X-Chat-Token": visitor}
    assert _key(app, headers=headers, environ_base=remote) == "ip:192.0.2.1"
    forged = {"X-Chat-Token": "forged"}
    assert _key(app, headers=forged, environ_base=remote) == "ip:192.0.2.1"


def test_a_budget_below_one_turns_hold_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="CHATAPP_DAILY_TOKEN_BUDGET"):
        create_app({"DAILY_TOKEN_BUDGET": 100, "MAX_OUTPUT_TOKENS": 1024})


def _hits_until_refused(app: Any, tries: int = 5) -> int:
    """Hit the chat limits as one client until refused; the hits taken."""
    for taken in range(tries):
        remote = {"REMOTE_ADDR": "192.0.2.9"}
        with app.test_request_context("/api/chat", method="POST", environ_base=remote):
            g.chatapp_hitting = True
            try:
                _hit_chat_limits()
            except RateLimitExceeded:
                return taken
    return tries


def test_each_app_keeps_its_own_rate_limit_string() -> None:
    # The parsed limits are kept per string: apps in one process never share
    # them, and a second look at a string counts with what it says.
    one = create_app({"RATE_LIMITS": "1/minute"})
    two = create_app({"RATE_LIMITS": "3/minute;100/day"})
    assert _hits_until_refused(one) == 1
    assert _hits_until_refused(two) == 3
    assert _hits_until_refused(create_app({"RATE_LIMITS": "1/minute"})) == 1


# -- what a turn cost ------------------------------------------------------------------


def outcome(
    finish: str, input_tokens: int | None, output_tokens: int | None, chars: int
) -> TurnOutcome:
    return TurnOutcome(
        info=TurnInfo("turn-0001", "v:x", "conv-0001", 0.0),
        finish_reason=finish,
        error_code=None,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        output_chars=chars,
        first_token_seconds=None,
    )


SPENT = [
    # finish, input, output, chars of text, tokens charged
    ("stop", 12, 30, 400, 42),  # reported usage is the truth
    ("length", 12, 1024, 10, 1036),
    ("cancelled", None, None, 401, 101),  # ~4 chars a token, rounded up
    ("cancelled", None, None, 1, 1),  # any text costs at least a token
    ("cancelled", None, None, 0, 0),
    ("error", 12, None, 40, 22),
    ("cancelled", 12, 1, 400, 112),  # usage counted before the text came
    ("error", 12, 300, 400, 312),
]


@pytest.mark.parametrize(("finish", "inp", "out", "chars", "spent"), SPENT)
def test_tokens_spent(
    finish: str, inp: int | None, out: int | None, chars: int, spent: int
) -> None:
    assert tokens_spent(outcome(finish, inp, out, chars)) == spent


def test_the_utc_day_and_its_end() -> None:
    midnight = 1_767_225_600  # 2026-01-01T00:00:00Z
    assert utc_day(midnight - 1) == "20251231"
    assert utc_day(midnight) == "20260101"
    assert seconds_to_utc_midnight(midnight - 30.5) == 31
    assert seconds_to_utc_midnight(midnight) == 86400
    assert seconds_to_utc_midnight(midnight - 0.2) == 1


# -- the two stores, one contract ------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> LimitStore:
    if request.param == "memory":
        return MemoryLimitStore()
    server: RedisServer = request.getfixturevalue("redis_server")
    server.command("-n", "8", "FLUSHDB")
    return RedisLimitStore(connect(f"redis://127.0.0.1:{server.port}/8"))


class TestStoreContract:
    def test_slots_are_counted_per_client(self, store: LimitStore) -> None:
        assert store.take_slot("c1", "t1", 2, 60)
        assert store.take_slot("c1", "t2", 2, 60)
        assert not store.take_slot("c1", "t3", 2, 60)
        assert store.take_slot("c2", "t4", 2, 60)

    def test_a_freed_slot_can_be_taken_again(self, store: LimitStore) -> None:
        assert store.take_slot("c1", "t1", 1, 60)
        store.free_slot("c1", "t1")
        store.free_slot("c1", "t1")  # twice is harmless
        assert store.take_slot("c1", "t2", 1, 60)

    def test_a_slot_frees_itself_after_its_lifetime(self, store: LimitStore) -> None:
        taken = time.monotonic()
        assert store.take_slot("c1", "t1", 1, 0.3)
        assert not store.take_slot("c1", "t2", 1, 0.3)
        wait_for(lambda: store.take_slot("c1", "t3", 1, 60), 5, "the slot to expire")
        assert time.monotonic() - taken >= 0.25

    def test_tokens_are_held_within_the_budget(self, store: LimitStore) -> None:
        assert store.hold_tokens("c1", "20260101", 40, 100)
        assert store.hold_tokens("c1", "20260101", 60, 100)
        assert not store.hold_tokens("c1", "20260101", 1, 100)
        assert store.hold_tokens("c2", "20260101", 100, 100)
        assert store.hold_tokens("c1", "20260102", 100, 100)

    def test_settling_gives_back_what_was_not_spent(self, store: LimitStore) -> None:
        assert store.hold_tokens("c1", "20260101", 100, 100)
        store.add_tokens("c1", "20260101", -70)
        assert store.hold_tokens("c1", "20260101", 70, 100)
        assert not store.hold_tokens("c1", "20260101", 1, 100)


# -- the gate, with Redis going away and back ------------------------------------------


def no_turns() -> int:
    """The relay as the gate sees it: how many turns this worker produces."""
    return 0


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill without disturbing others."""
    server = RedisServer()
    server.start()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


def _gate(client: redis.Redis | None, **settings: Any) -> Gate:
    config = load_config(environ={}, overrides=settings)
    return Gate(config, no_turns, client)


def _slots(server: RedisServer, client: str) -> int:
    raw = server.command("ZCARD", f"chatapp:limits:streams:{client}")
    return int(raw.decode().strip() or 0)


@pytest.mark.redis
def test_the_gate_counts_in_memory_while_redis_is_away(
    private_redis: RedisServer,
) -> None:
    client = connect(f"redis://127.0.0.1:{private_redis.port}/0")
    gate = _gate(client, MAX_STREAMS_PER_CLIENT=2)
    held = gate.admit("ip:192.0.2.1")
    assert _slots(private_redis, "ip:192.0.2.1") == 1
    assert gate.storage_problem() is None

    private_redis.kill()
    started = time.monotonic()
    away = [gate.admit("ip:192.0.2.1"), gate.admit("ip:192.0.2.1")]
    with pytest.raises(ApiError) as refused:
        gate.admit("ip:192.0.2.1")
    assert refused.value.code == "too_many_streams"
    assert time.monotonic() - started < 4 * REDIS_TIMEOUT + 1
    assert gate.storage_problem() is not None
    gate.release(held)  # held in Redis, which is away: nothing breaks
    for reservation in away:
        gate.release(reservation)

    private_redis.start()
    assert gate.storage_problem() is None
    # Back to Redis by itself, a couple of seconds after it answers again.
    visitors = (f"ip:198.51.100.{n}" for n in range(1, 200))

    def shared_again() -> bool:
        visitor = next(visitors)
        gate.admit(visitor)
        return _slots(private_redis, visitor) == 1

    wait_for(shared_again, 10, "the gate to use Redis again", every=0.2)


def test_memory_limits_purge_at_a_steady_pace_and_still_count() -> None:
    """A hit within a second of the last purge starts no purge timer of its
    own (limits' memory storage started one for nearly every hit), and the
    window counts the same whether or not a purge has run."""
    from limits import parse
    from limits.storage import storage_from_string

    from chatapp.web.limits_storage import MEMORY_SCHEME
    from chatapp.web.limits_storage import PURGE_EVERY
    from chatapp.web.moving_window import CountingMovingWindow

    now = [1000.0]
    storage = storage_from_string(f"{MEMORY_SCHEME}://", clock=lambda: now[0])
    window = CountingMovingWindow(storage)
    item = parse("3 per minute")
    storage.timer.join()  # the one the storage starts at birth
    first = storage.timer

    assert [window.hit(item, "visitor") for _ in range(4)] == [True] * 3 + [False]
    assert storage.timer is first  # four hits, no purge timer started

    now[0] += PURGE_EVERY
    assert not window.hit(item, "visitor")  # still full: a purge drops nothing live
    assert storage.timer is not first  # one purge, a second on
    storage.timer.join()
    assert window.get_window_stats(item, "visitor").remaining == 0
