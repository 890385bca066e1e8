"""Which bot-check solutions were used already: this process's memory.

Each solution is accepted once; it is remembered until its challenge
expires, after which it would be refused as expired anyway. The Redis twin
(challenges_redis.py) shares the record between workers and hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

# Forget expired entries once the record holds this many.
PRUNE_AT = 4096


class SpentSolutions(Protocol):
    """The record of used solutions."""

    def claim(self, key: str, ttl: float) -> bool:
        """Mark `key` used for `ttl` seconds; False when it already was."""


class MemorySpentSolutions:
    """Used solutions of this process alone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def claim(self, key: str, ttl: float) -> bool:
        now = self._clock()
        if len(self._until) >= PRUNE_AT:
            self._until = {k: t for k, t in self._until.items() if t > now}
        if self._until.get(key, 0.0) > now:
            return False
        self._until[key] = now + ttl
        return True
