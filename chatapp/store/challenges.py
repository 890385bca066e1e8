"""Which bot-check solutions were used already: this process's memory.

Each solution is accepted once; it is remembered until its challenge
expires, after which it would be refused as expired anyway. The Redis twin
(challenges_redis.py) shares the record between workers and hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from chatapp.store.expiring import ExpiringMap


class SpentSolutions(Protocol):
    """The record of used solutions."""

    def claim(self, key: str, ttl: float) -> bool:
        """Mark `key` used for `ttl` seconds; False when it already was."""


class MemorySpentSolutions(SpentSolutions):
    """Used solutions of this process alone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._spent: ExpiringMap[str, bool] = ExpiringMap(clock, sweep_every=60)

    def claim(self, key: str, ttl: float) -> bool:
        return self._spent.add(key, True, ttl)
