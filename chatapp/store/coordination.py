"""Coordination: what the workers tell each other about the turns they run.

Besides its frames (the turn log, events.py) a turn needs a few facts shared
across workers:

  cancels   a cancel asked anywhere reaches the worker producing the turn,
            announced at once and kept as a flag for a worker that missed it
  readers   a worker following a turn produced elsewhere marks it read, so
            its producer does not cancel it as an orphan
  leases    a worker producing turns renews its lease; a worker whose lease
            lapsed is dead, and others end its turns (one claims each) and
            settle what they held, charged to the text each turn streamed

`MemoryCoordination` serves one process; `RedisCoordination`
(coordination_redis.py) every worker and host. Both implement all of
`Coordination`; tests/gevent_contract.py holds them to the same contract.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Protocol

from chatapp import sse
from chatapp.store.events import MemoryEventLog
from chatapp.store.expiring import ExpiringMap

# A cancel flag outlives any turn it may be meant for by default.
CANCEL_TTL = 3600.0


class Coordination(Protocol):
    """Cancels, readers' marks, leases and reclaim data of the turns."""

    # This process's name in leases, turn logs and slot tickets.
    worker: str

    def request_cancel(self, turn_id: str) -> None:
        """Ask whichever process runs the turn to cancel it."""

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call `callback(turn_id)` in this process when a cancel is asked."""

    def on_resubscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever cancels may have been missed."""

    def cancels_requested(self, turn_ids: list[str]) -> list[bool]:
        """Tell, for each turn, whether a cancel was asked for."""

    def mark_readers(self, turn_ids: list[str], seconds: float) -> None:
        """Say readers here follow these turns, for `seconds` from now."""

    def readers_elsewhere(self, turn_ids: list[str]) -> list[bool]:
        """Tell, for each turn, whether a reader's mark on it lives."""

    def renew_lease(self, seconds: float) -> None:
        """Tell other processes this one still produces its turns."""

    def workers_alive(self, workers: list[str]) -> list[bool]:
        """Tell, for each worker, whether its lease is still held."""

    def claim_reap(self, turn_id: str, seconds: float) -> bool:
        """Claim ending a dead producer's turn; False when another did."""

    def streamed_chars(self, turn_id: str) -> int:
        """Characters of answer text a turn's log holds (0 once it expired)."""


def worker_name() -> str:
    """A name for this process that no other process ever had."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def delta_chars(frames: Iterable[bytes]) -> int:
    """Characters of answer text in `frames`."""
    return sum(
        len(json.loads(sse.parse(frame)[2])["text"])
        for frame in frames
        if sse.is_delta(frame)
    )


class MemoryCoordination(Coordination):
    """Coordination within one process: what Redis keys hold, kept in maps."""

    def __init__(
        self,
        log: MemoryEventLog,
        *,
        cancel_ttl: float = CANCEL_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = worker_name()
        self._log = log
        self._cancel_ttl = cancel_ttl
        self._listeners: list[Callable[[str], None]] = []
        self._resubscribed: list[Callable[[], None]] = []
        self._cancels: ExpiringMap[str, bool] = ExpiringMap(clock)
        self._readers: ExpiringMap[str, bool] = ExpiringMap(clock)
        self._leases: ExpiringMap[str, bool] = ExpiringMap(clock)
        self._reaped: ExpiringMap[str, bool] = ExpiringMap(clock)

    def request_cancel(self, turn_id: str) -> None:
        self._cancels.set(turn_id, True, self._cancel_ttl)
        for callback in self._listeners:
            callback(turn_id)

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)

    def on_resubscribe(self, callback: Callable[[], None]) -> None:
        """Kept, never called: in one process no announcement is missed."""
        self._resubscribed.append(callback)

    def cancels_requested(self, turn_ids: list[str]) -> list[bool]:
        return [self._cancels.get(t) is not None for t in turn_ids]

    def mark_readers(self, turn_ids: list[str], seconds: float) -> None:
        for turn_id in turn_ids:
            self._readers.set(turn_id, True, seconds)

    def readers_elsewhere(self, turn_ids: list[str]) -> list[bool]:
        return [self._readers.get(t) is not None for t in turn_ids]

    def renew_lease(self, seconds: float) -> None:
        self._leases.set(self.worker, True, seconds)

    def workers_alive(self, workers: list[str]) -> list[bool]:
        return [self._leases.get(w) is not None for w in workers]

    def claim_reap(self, turn_id: str, seconds: float) -> bool:
        return self._reaped.add(turn_id, True, seconds)

    def streamed_chars(self, turn_id: str) -> int:
        return delta_chars(self._log.frames(turn_id))
