"""A dict whose entries expire: what the memory twins keep instead of Redis TTLs.

Each entry lives `ttl` seconds from when it was set, on an injectable clock.
An expired entry is never returned: a read finds it gone and drops it, and
every operation first drops all expired entries once `sweep_every` seconds
have passed since the last sweep, so entries nobody reads again do not pile
up. `on_expire(key, value)` is called once for each entry that expires (not
for one popped or replaced), so an owner can tidy what hangs off it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Generic
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

FOREVER = math.inf


class ExpiringMap(Generic[K, V]):
    """Keys with values and a time to live each, like Redis keys with EXPIRE."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        sweep_every: float = 5.0,
        on_expire: Callable[[K, V], None] | None = None,
    ) -> None:
        self._clock = clock
        self._sweep_every = sweep_every
        self._on_expire = on_expire
        self._entries: dict[K, tuple[V, float]] = {}
        self._next_sweep = clock() + sweep_every

    def _now(self) -> float:
        now = self._clock()
        if now >= self._next_sweep:
            self._purge(now)
        return now

    def _live(self, key: K, now: float) -> tuple[V, float] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            if self._on_expire is not None:
                self._on_expire(key, entry[0])
            return None
        return entry

    def set(self, key: K, value: V, ttl: float) -> None:
        """Keep `value` under `key` for `ttl` seconds from now (SET EX)."""
        now = self._now()
        self._entries[key] = (value, now + ttl)

    def add(self, key: K, value: V, ttl: float) -> bool:
        """Set `key` unless it lives; say whether it was set (SET NX EX)."""
        now = self._now()
        if self._live(key, now) is not None:
            return False
        self._entries[key] = (value, now + ttl)
        return True

    def get(self, key: K) -> V | None:
        """The value under `key`, or None when it is absent or expired.

        Keep no None values: they would read as absent.
        """
        entry = self._live(key, self._now())
        return entry[0] if entry is not None else None

    def pop(self, key: K) -> V | None:
        """Remove `key` and return its value, if it lived."""
        entry = self._live(key, self._now())
        if entry is None:
            return None
        del self._entries[key]
        return entry[0]

    def expire(self, key: K, ttl: float) -> bool:
        """Make a living `key` expire `ttl` seconds from now (EXPIRE)."""
        now = self._now()
        entry = self._live(key, now)
        if entry is None:
            return False
        self._entries[key] = (entry[0], now + ttl)
        return True

    def extend(self, key: K, ttl: float) -> bool:
        """Make a living `key` live at least `ttl` seconds more (EXPIRE GT)."""
        now = self._now()
        entry = self._live(key, now)
        if entry is None:
            return False
        self._entries[key] = (entry[0], max(entry[1], now + ttl))
        return True

    def purge(self) -> None:
        """Drop every expired entry now."""
        self._purge(self._clock())

    def _purge(self, now: float) -> None:
        self._next_sweep = now + self._sweep_every
        expired = [(k, v) for k, (v, end) in self._entries.items() if end <= now]
        for key, value in expired:
            del self._entries[key]
            if self._on_expire is not None:
                self._on_expire(key, value)

    def __len__(self) -> int:
        """How many entries live (expired ones are dropped first)."""
        self.purge()
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """The living keys (expired ones are dropped first)."""
        self.purge()
        return iter(list(self._entries))
