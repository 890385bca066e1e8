"""Where stream slots and daily token budgets are kept: memory or Redis.

chatapp:limits:streams:<client>         zset: ticket -> expiry (server time)
chatapp:limits:tokens:<day>:<client>    tokens used and held that UTC day
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import redis

KEY_PREFIX = "chatapp:limits"


class LimitStore(Protocol):
    """Where stream slots and token budgets are kept."""

    def take_slot(self, client: str, ticket: str, most: int, lifetime: float) -> bool:
        """Hold one of `most` slots for `lifetime` seconds unless all are held."""

    def free_slot(self, client: str, ticket: str) -> None:
        """Give a slot back."""

    def hold_tokens(self, client: str, day: str, amount: int, budget: int) -> bool:
        """Add `amount` to the day's tokens unless that would pass `budget`."""

    def add_tokens(self, client: str, day: str, amount: int) -> None:
        """Add (or with a negative amount, give back) tokens for the day."""


class MemoryLimitStore:
    """Slots and budgets of this process alone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slots: dict[str, dict[str, float]] = {}
        self._tokens: dict[str, dict[str, int]] = {}

    def take_slot(self, client: str, ticket: str, most: int, lifetime: float) -> bool:
        now = self._clock()
        held = {t: end for t, end in self._slots.get(client, {}).items() if end > now}
        if len(held) >= most:
            self._slots[client] = held
            return False
        held[ticket] = now + lifetime
        self._slots[client] = held
        return True

    def free_slot(self, client: str, ticket: str) -> None:
        held = self._slots.get(client)
        if held is not None:
            held.pop(ticket, None)
            if not held:
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
local most = tonumber(ARGV[1])
local t = nil
if redis.call('ZCARD', KEYS[1]) >= most then
  t = now()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
  if redis.call('ZCARD', KEYS[1]) >= most then
    return 0
  end
end
local lifetime = tonumber(ARGV[3])
t = t or now()
redis.call('ZADD', KEYS[1], t + lifetime, ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(lifetime) + 1)
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


class RedisLimitStore:
    """Slots and budgets shared by every worker and host through Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._take_slot = client.register_script(_TAKE_SLOT)
        self._hold_tokens = client.register_script(_HOLD_TOKENS)

    def take_slot(self, client: str, ticket: str, most: int, lifetime: float) -> bool:
        taken = self._take_slot(
            keys=[_slots_key(client)], args=[most, ticket, lifetime]
        )
        return bool(taken)

    def free_slot(self, client: str, ticket: str) -> None:
        self._r.zrem(_slots_key(client), ticket)

    def hold_tokens(self, client: str, day: str, amount: int, budget: int) -> bool:
        held = self._hold_tokens(
            keys=[_tokens_key(client, day)],
            args=[amount, budget, TOKENS_KEEP_SECONDS],
        )
        return bool(held)

    def add_tokens(self, client: str, day: str, amount: int) -> None:
        key = _tokens_key(client, day)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, TOKENS_KEEP_SECONDS)
            pipe.execute()


def _slots_key(client: str) -> str:
    return f"{KEY_PREFIX}:streams:{client}"


def _tokens_key(client: str, day: str) -> str:
    return f"{KEY_PREFIX}:tokens:{day}:{client}"
