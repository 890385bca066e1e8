"""A moving-window rate limit whose hit also says what is left.

limits' MovingWindowRateLimiter.hit answers only yes or no; what is left of
the window would take `get_window_stats`, a second look at the window (a
second Lua call and round trip per limit with Redis) on every message. This
strategy makes the very same hit -- the same list under the same key, the
same rule as limits' acquire_moving_window.lua -- and counts the window in
the same Lua call, popping expired hits off the list's tail (the list is
newest first), so the count is O(1) commands per hit, amortised. Without
Redis (memory, or flask-limiter's fallback while Redis is away) the count is
a bisect of the in-process list, with no I/O.

Each hit's count is kept for the request in `g`, where `tightest()` finds
the limit closest to running out, for the RateLimit header fields.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from flask import g
from flask import has_app_context
from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.storage import RedisStorage
from limits.strategies import STRATEGIES
from limits.strategies import MovingWindowRateLimiter

NAME = "chatapp-moving-window"

# ARGV: now, limit, expiry, amount. Returns {acquired, count, oldest}: whether
# the hit was taken, how many hits the window holds after it, and the time of
# the oldest of them ('' when none).
_ACQUIRE_AND_COUNT = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local expiry = tonumber(ARGV[3])
local amount = tonumber(ARGV[4])
local acquired = 0
if amount <= limit then
  local entry = redis.call('lindex', KEYS[1], limit - amount)
  if not (entry and tonumber(entry) >= now - expiry) then
    for i = 1, amount do
      redis.call('lpush', KEYS[1], ARGV[1])
    end
    redis.call('ltrim', KEYS[1], 0, limit - 1)
    redis.call('expire', KEYS[1], expiry)
    acquired = 1
  end
end
-- Hits are pushed at the head, newest first, so hits that left the window
-- sit at the tail. Pop them there: each hit is popped at most once, so the
-- count costs O(1) commands per hit amortised, whatever the limit (a search
-- of the list would cost log2(limit) reads on every hit), and the list keeps
-- the window's hits alone.
local oldest = redis.call('lindex', KEYS[1], -1)
while oldest and tonumber(oldest) < now - expiry do
  redis.call('rpop', KEYS[1])
  oldest = redis.call('lindex', KEYS[1], -1)
end
if not oldest then
  return {acquired, 0, ''}
end
return {acquired, redis.call('llen', KEYS[1]), oldest}
"""


@dataclass(frozen=True, slots=True)
class WindowCount:
    """What one hit left of one limit."""

    item: RateLimitItem
    remaining: int
    reset_at: float  # when the oldest counted hit leaves the window


class CountingMovingWindow(MovingWindowRateLimiter):
    """limits' moving window, whose hit also counts what is left."""

    def __init__(self, storage: RedisStorage | MemoryStorage) -> None:
        super().__init__(storage)
        self._script = None
        if isinstance(storage, RedisStorage):
            client: Any = storage.get_connection()
            self._script = client.register_script(_ACQUIRE_AND_COUNT)

    def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        key = item.key_for(*identifiers)
        expiry = item.get_expiry()
        now = time.time()
        if self._script is not None and isinstance(self.storage, RedisStorage):
            acquired, count, oldest = self._script(
                keys=[self.storage.prefixed_key(key)],
                args=[now, item.amount, expiry, cost],
            )
            oldest_at = float(oldest) if oldest else now
        else:
            acquired = super().hit(item, *identifiers, cost=cost)
            oldest_at, count = self.storage.get_moving_window(  # type: ignore[attr-defined]
                key, item.amount, expiry
            )
        _remember(
            WindowCount(item, max(0, item.amount - int(count)), oldest_at + expiry)
        )
        return bool(acquired)


def _remember(count: WindowCount) -> None:
    if has_app_context():
        counts: list[WindowCount] = g.setdefault("chatapp_window_counts", [])
        counts.append(count)


def tightest() -> WindowCount | None:
    """The limit this request's hits left closest to running out."""
    counts: list[WindowCount] = g.get("chatapp_window_counts") or []
    if not counts:
        return None
    return min(counts, key=lambda c: (c.remaining, -c.reset_at))


def headers(count: WindowCount, now: float | None = None) -> dict[str, str]:
    """Spell a count as the IETF httpapi draft's RateLimit header fields."""
    now = time.time() if now is None else now
    name = str(count.item).replace('"', "")
    wait = max(0, math.ceil(count.reset_at - now))
    quota, window = count.item.amount, count.item.get_expiry()
    return {
        "RateLimit-Policy": f'"{name}";q={quota};w={window}',
        "RateLimit": f'"{name}";r={count.remaining};t={wait}',
    }


# flask-limiter picks its strategy by name from limits' registry.
STRATEGIES.setdefault(NAME, CountingMovingWindow)
