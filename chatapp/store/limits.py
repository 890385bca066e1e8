"""Where stream slots and daily token budgets are kept: memory or Redis.

The words (client, limit, slot, ticket, hold, settle, ttl) are those of
turns/holds.py's docstring.

chatapp:limits:streams:<client>         zset: ticket -> expiry (server time);
                                        a ticket is `<worker>/<random>`
chatapp:limits:tokens:<day>:<client>    tokens used and held that UTC day
chatapp:limits:held:<worker>            hash: ticket -> the budget a running
                                        turn of that worker holds (JSON)
chatapp:limits:holders                  set: workers that have held budget
                                        (tokens, or the site's spend)

A worker that dies (SIGKILL, a lost host) cannot settle what its turns hold.
Its lease (`chatapp:worker:<id>`) lapses, and then any other worker frees
its slots (a client's tickets name their workers, looked at when all its
slots are taken: nothing extra per turn) and settles its budget holds (each
recorded while its turn runs, only when a budget is set) to the text the
turn's log holds, as a failed turn is charged.

Every command names one key, so all of this works on Redis Cluster.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from typing import Protocol
from typing import cast

import redis

from chatapp.store.expiring import ExpiringMap
from chatapp.store.redis import guard

log = logging.getLogger(__name__)

KEY_PREFIX = "chatapp:limits"
HOLDERS_KEY = f"{KEY_PREFIX}:holders"
# One worker at a time reclaims a dead worker's holds; the claim is dropped
# when done, and expires by itself if that worker dies meanwhile.
RECLAIM_CLAIM_SECONDS = 60


@dataclass(frozen=True)
class Hold:
    """The budget a running turn holds in Redis, recorded by its worker."""

    client: str
    turn: str
    day: str
    tokens: int
    # The site's spend it holds (store/spend.py), and in which month.
    model: str = ""
    spend: int = 0
    month: str = ""


class LimitStore(Protocol):
    """Where stream slots and token budgets are kept."""

    def take_slot(self, client: str, ticket: str, limit: int, ttl: float) -> bool:
        """Hold one of `limit` slots for `ttl` seconds unless all are held."""

    def free_slot(self, client: str, ticket: str) -> None:
        """Give a slot back."""

    def hold_tokens(self, client: str, day: str, amount: int, budget: int) -> bool:
        """Add `amount` to the day's tokens unless that would pass `budget`."""

    def add_tokens(self, client: str, day: str, amount: int) -> None:
        """Add (or with a negative amount, give back) tokens for the day."""


class MemoryLimitStore(LimitStore):
    """Slots and budgets of this process alone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slots: dict[str, ExpiringMap[str, bool]] = {}
        self._tokens: dict[str, dict[str, int]] = {}

    def take_slot(self, client: str, ticket: str, limit: int, ttl: float) -> bool:
        held = self._slots.get(client)
        if held is None:
            held = self._slots[client] = ExpiringMap(self._clock)
        if len(held) >= limit:
            return False
        held.set(ticket, True, ttl)
        return True

    def free_slot(self, client: str, ticket: str) -> None:
        held = self._slots.get(client)
        if held is not None:
            held.pop(ticket)
            if not len(held):
                del self._slots[client]

    def hold_tokens(self, client: str, day: str, amount: int, budget: int) -> bool:
        for old in [d for d in self._tokens if d < day]:
            del self._tokens[old]
        used = self._tokens.setdefault(day, {})
        if used.get(client, 0) + amount > budget:
            return False
        used[client] = used.get(client, 0) + amount
        return True

    def add_tokens(self, client: str, day: str, amount: int) -> None:
        used = self._tokens.get(day)
        if used is not None:
            used[client] = used.get(client, 0) + amount


# Take a slot if one is free, pruning expired ones only when all look taken:
# most admissions cost three commands. Scores are expiry times on the Redis
# server's clock, so hosts' clocks never matter.
_TAKE_SLOT = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local limit = tonumber(ARGV[1])
local t = nil
if redis.call('ZCARD', KEYS[1]) >= limit then
  t = now()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
  if redis.call('ZCARD', KEYS[1]) >= limit then
    return 0
  end
end
local ttl = tonumber(ARGV[3])
t = t or now()
redis.call('ZADD', KEYS[1], t + ttl, ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
return 1
"""

_HOLD_TOKENS = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return 0
end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# A day's tokens are kept a day after it ends, for turns that end late.
TOKENS_KEEP_SECONDS = 2 * 86400


class RedisLimitStore(LimitStore):
    """Slots and budgets shared by every worker and host through Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._take_slot = client.register_script(_TAKE_SLOT)
        self._hold_tokens = client.register_script(_HOLD_TOKENS)

    @guard("limits: take slot")
    def take_slot(self, client: str, ticket: str, limit: int, ttl: float) -> bool:
        taken = self._take_slot(keys=[_slots_key(client)], args=[limit, ticket, ttl])
        return bool(taken)

    @guard("limits: free slot")
    def free_slot(self, client: str, ticket: str) -> None:
        self._r.zrem(_slots_key(client), ticket)

    @guard("limits: hold tokens")
    def hold_tokens(self, client: str, day: str, amount: int, budget: int) -> bool:
        held = self._hold_tokens(
            keys=[_tokens_key(client, day)],
            args=[amount, budget, TOKENS_KEEP_SECONDS],
        )
        return bool(held)

    @guard("limits: add tokens")
    def add_tokens(self, client: str, day: str, amount: int) -> None:
        key = _tokens_key(client, day)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, TOKENS_KEEP_SECONDS)
            pipe.execute()

    # -- what dead workers held ------------------------------------------------

    @guard("limits: free dead slots")
    def free_dead_slots(
        self, client: str, alive: Callable[[list[str]], list[bool]]
    ) -> int:
        """Free a client's slots held by workers whose lease is gone."""
        key = _slots_key(client)
        tickets = [_text(t) for t in cast("list[bytes]", self._r.zrange(key, 0, -1))]
        owners = sorted({t.rpartition("/")[0] for t in tickets} - {""})
        if not owners:
            return 0
        dead = {w for w, up in zip(owners, alive(owners), strict=True) if not up}
        gone = [t for t in tickets if t.rpartition("/")[0] in dead]
        if gone:
            self._r.zrem(key, *gone)
        return len(gone)

    @guard("limits: record hold")
    def record_hold(self, worker: str, ticket: str, hold: Hold) -> None:
        """Note what a turn of `worker` holds, for reclaiming if it dies."""
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hset(_held_key(worker), ticket, json.dumps(asdict(hold)))
            # Every time: a reclaim may have dropped an idle worker whose
            # lease had lapsed (leases are renewed only while turns run).
            pipe.sadd(HOLDERS_KEY, worker)
            pipe.execute()

    @guard("limits: forget hold")
    def forget_hold(self, worker: str, ticket: str) -> None:
        """The turn settled what it held itself."""
        self._r.hdel(_held_key(worker), ticket)

    @guard("limits: reclaim")
    def reclaim(
        self,
        alive: Callable[[list[str]], list[bool]],
        settle: Callable[[Hold], None],
    ) -> int:
        """Settle (with `settle`) what dead workers' turns hold; return how many."""
        holders = sorted(_text(w) for w in self._r.smembers(HOLDERS_KEY))
        if not holders:
            return 0
        dead = [w for w, up in zip(holders, alive(holders), strict=True) if not up]
        freed = 0
        for worker in dead:
            claim = f"{KEY_PREFIX}:reclaimed:{worker}"
            if not self._r.set(claim, "1", nx=True, ex=RECLAIM_CLAIM_SECONDS):
                continue  # another worker does it
            held = self._r.hgetall(_held_key(worker))
            for ticket, raw in held.items():
                settle(Hold(**json.loads(raw)))
                # One by one: a failure midway leaves only the unsettled.
                self._r.hdel(_held_key(worker), ticket)
                freed += 1
            self._r.srem(HOLDERS_KEY, worker)
            self._r.delete(claim)
            if held:
                log.warning(
                    "limits: worker %s stopped; settled the budget its %d turns held",
                    worker,
                    len(held),
                )
        return freed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _held_key(worker: str) -> str:
    return f"{KEY_PREFIX}:held:{worker}"


def _slots_key(client: str) -> str:
    return f"{KEY_PREFIX}:streams:{client}"


def _tokens_key(client: str, day: str) -> str:
    return f"{KEY_PREFIX}:tokens:{day}:{client}"
