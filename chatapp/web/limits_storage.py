"""limits' storages as chatapp runs them: Redis on the worker's own client,
and memory that purges at a steady pace.


limits builds a client of its own from a URL; this storage uses the one the
worker already has instead (`chatapp-redis://`, with the client passed as a
storage option): one pool per worker, the same timeouts, TLS and no-retry
rule as every other Redis call, reads from the primary only (limits'
Sentinel storage reads replicas by default, and its URL parser reads
`/service/db` as a service named `servicedb`), and a worker that starts
while Redis is away starts all the same.

limits' memory storage starts a purge timer (a thread, under gevent a
greenlet) 10 ms after any hit when none is running: at a chat's pace nearly
every hit started one, about 280 µs of CPU each (BENCHMARKS.md). Counting
never depends on the purge (every read checks the times itself); the purge
only keeps memory bounded, so `chatapp-memory://` starts it at most once a
second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from limits.storage import MemoryStorage
from limits.storage import RedisStorage

SCHEME = "chatapp-redis"
MEMORY_SCHEME = "chatapp-memory"
PURGE_EVERY = 1.0  # seconds between purges of expired hits, at most


class SharedClientStorage(RedisStorage):
    """Moving windows kept through the worker's Redis client."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(
        self,
        uri: str,
        client: Any = None,
        key_prefix: str = RedisStorage.PREFIX,
        wrap_exceptions: bool = False,
        **options: float | str | bool,
    ) -> None:
        if client is None:
            raise ValueError(f"{SCHEME}:// needs the client as a storage option")
        super(RedisStorage, self).__init__(uri, wrap_exceptions=wrap_exceptions)
        self.key_prefix = key_prefix
        self.target_server = "redis"
        self.dependency = redis
        self.storage = client
        self.initialize_storage(uri)


class PacedMemoryStorage(MemoryStorage):
    """limits' memory storage, purging expired hits at most once a second."""

    STORAGE_SCHEME = [MEMORY_SCHEME]

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        clock: Callable[[], float] = time.monotonic,
        **options: str,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._clock = clock
        self._next_purge = clock() + PURGE_EVERY  # __init__ started one

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 (limits' name)
        now = self._clock()
        if now < self._next_purge or self.timer.is_alive():
            return
        self._next_purge = now + PURGE_EVERY
        self.timer = threading.Timer(0.01, self._MemoryStorage__expire_events)  # type: ignore[attr-defined]
        self.timer.start()
