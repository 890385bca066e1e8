"""The turn log: each turn's events, readable from any id, one contract.

The producer greenlet is the only writer of a turn's events and numbers them
1..n; readers block until events after their id arrive. Besides events the
log carries the few shared facts a turn needs across workers and hosts:
a cancel request, whether any reader is still around, and whether the
producer is still alive.

`MemoryTurnLog` serves one process; `RedisTurnLog` (streams_redis.py) shares
turns across workers and hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Protocol

import gevent.event


@dataclass(frozen=True, slots=True)
class TurnInfo:
    """The fixed facts of one turn."""

    id: str
    owner: str
    conversation_id: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Event:
    """One logged SSE event; `data` is JSON text."""

    id: int
    event: str
    data: str


@dataclass(frozen=True, slots=True)
class TurnPulse:
    """What a producer's supervisor learns about its turn each second."""

    readers: bool  # a reader touched the turn within the orphan time
    cancel: bool  # someone asked to cancel it


class TurnLog(Protocol):
    """What the relay and the views need from a turn log."""

    def create(self, info: TurnInfo, ttl: float) -> None:
        """Register a new turn that lives at least `ttl` seconds."""

    def info(self, turn_id: str) -> TurnInfo | None:
        """Return the turn's facts, or None when unknown or expired."""

    def append(self, turn_id: str, events: list[Event]) -> None:
        """Add the producer's next events (ids continue the sequence)."""

    def finish(self, turn_id: str, done_id: int, ttl: float) -> None:
        """Mark the turn complete at `done_id`; keep it replayable `ttl` seconds."""

    def done_id(self, turn_id: str) -> int | None:
        """Return the id of the turn's `done` event once it is written."""

    def read(self, turn_id: str, after: int, timeout: float) -> list[Event] | None:
        """Return events after `after`, waiting up to `timeout`; None if gone."""

    def request_cancel(self, turn_id: str) -> None:
        """Ask whichever process runs the turn to cancel it."""

    def cancel_requested(self, turn_id: str) -> bool:
        """Tell whether a cancel was asked for."""

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call `callback(turn_id)` in this process when any cancel is asked."""

    def touch_reader(self, turn_id: str, ttl: float) -> None:
        """Record that a reader is present for the next `ttl` seconds."""

    def pulse(self, turn_ids: list[str], lease: float) -> list[TurnPulse]:
        """Renew these turns' producer leases; report readers and cancels."""

    def producer_alive(self, turn_id: str) -> bool:
        """Tell whether the turn's producer renewed its lease recently."""

    def claim_reap(self, turn_id: str) -> int | None:
        """Claim a dead producer's turn; return its last event id if won."""

    def ping(self) -> None:
        """Raise StoreError when the backing store does not answer."""


@dataclass
class _Turn:
    info: TurnInfo
    expires_at: float
    events: list[Event] = field(default_factory=list)
    changed: gevent.event.Event = field(default_factory=gevent.event.Event)
    done_id: int | None = None
    cancel: bool = False
    reader_until: float = 0.0


class MemoryTurnLog:
    """Turn log for one process: events in lists, waits on gevent events."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._turns: dict[str, _Turn] = {}
        self._clock = clock
        self._listeners: list[Callable[[str], None]] = []
        self._next_sweep = 0.0

    def _get(self, turn_id: str) -> _Turn | None:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        turn = self._turns.get(turn_id)
        if turn is None or turn.expires_at <= now:
            return None
        return turn

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + 5
        for turn_id in [k for k, t in self._turns.items() if t.expires_at <= now]:
            turn = self._turns.pop(turn_id)
            turn.changed.set()

    def create(self, info: TurnInfo, ttl: float) -> None:
        now = self._clock()
        self._turns[info.id] = _Turn(info, expires_at=now + ttl)

    def info(self, turn_id: str) -> TurnInfo | None:
        turn = self._get(turn_id)
        return turn.info if turn else None

    def append(self, turn_id: str, events: list[Event]) -> None:
        turn = self._get(turn_id)
        if turn is None:
            return
        turn.events.extend(events)
        # Wake every reader waiting on this turn, then give the next ones a
        # fresh event to wait on.
        changed, turn.changed = turn.changed, gevent.event.Event()
        changed.set()

    def finish(self, turn_id: str, done_id: int, ttl: float) -> None:
        turn = self._get(turn_id)
        if turn is not None:
            turn.done_id = done_id
            turn.expires_at = self._clock() + ttl

    def done_id(self, turn_id: str) -> int | None:
        turn = self._get(turn_id)
        return turn.done_id if turn else None

    def read(self, turn_id: str, after: int, timeout: float) -> list[Event] | None:
        turn = self._get(turn_id)
        if turn is None:
            return None
        # Ids are 1..n in list order, so event n sits at index n-1.
        if len(turn.events) <= after and timeout > 0:
            turn.changed.wait(timeout)
            if self._get(turn_id) is None:
                return None
        return turn.events[max(after, 0) :]

    def request_cancel(self, turn_id: str) -> None:
        turn = self._get(turn_id)
        if turn is None:
            return
        turn.cancel = True
        for callback in self._listeners:
            callback(turn_id)

    def cancel_requested(self, turn_id: str) -> bool:
        turn = self._get(turn_id)
        return bool(turn and turn.cancel)

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)

    def touch_reader(self, turn_id: str, ttl: float) -> None:
        turn = self._get(turn_id)
        if turn is not None:
            turn.reader_until = self._clock() + ttl

    def pulse(self, turn_ids: list[str], lease: float) -> list[TurnPulse]:
        # No lease to renew: producer and readers share this process.
        now = self._clock()
        pulses = []
        for turn_id in turn_ids:
            turn = self._get(turn_id)
            pulses.append(
                TurnPulse(
                    readers=bool(turn and turn.reader_until > now),
                    cancel=bool(turn and turn.cancel),
                )
            )
        return pulses

    def producer_alive(self, turn_id: str) -> bool:
        return True

    def claim_reap(self, turn_id: str) -> int | None:
        return None

    def ping(self) -> None:
        """Memory always answers."""
