"""The turn log: each turn's frames, readable from any id, one contract.

A turn's producer is its log's only writer: it registers the turn with its
`start` frame, appends the frames that follow and finishes with the frames
that end in `done`. Readers `open` a turn and follow its `Tail`. What
workers tell each other about turns (cancels, readers, leases) is the other
concept of a turn's storage: coordination.py.

`MemoryEventLog` serves one process; `RedisEventLog` (events_redis.py, with
follower_redis.py for turns produced elsewhere) shares turns across workers
and hosts. Both implement all of `EventLog`; tests/gevent_contract.py holds
them to the same contract.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chatapp.store.expiring import ExpiringMap
from chatapp.store.tail import Tail
from chatapp.store.turn import TurnInfo


class EventLog(Protocol):
    """What the turn machinery and the views need from a turn log."""

    def create(self, info: TurnInfo, start: bytes, ttl: float) -> Tail:
        """Register a new turn with its first frame; return the producer's tail."""

    def append(self, turn_id: str, tail: Tail, frames: list[bytes]) -> None:
        """Add the producer's next frames (ids continue the sequence)."""

    def finish(self, turn_id: str, tail: Tail, frames: list[bytes], ttl: float) -> None:
        """Add the last frames, ending with `done`; keep them `ttl` seconds."""

    def open(self, turn_id: str) -> Tail | None:
        """Join a turn's readers; None when it is unknown or expired."""

    def close(self, turn_id: str, tail: Tail) -> None:
        """Leave a turn opened with `open`."""

    def info(self, turn_id: str) -> TurnInfo | None:
        """Return the turn's facts, or None when unknown or expired."""

    def ping(self) -> None:
        """Raise StoreError when the backing store does not answer."""

    def forget(self, turn_id: str, remember: float) -> None:
        """Drop a finished turn's replayable frames now, before they expire.

        The turn is remembered as deleted for `remember` seconds, so that a
        reader with a fresh stream token is told it is gone (404), not that
        its log was lost on the way (see `forgotten`).
        """

    def forgotten(self, turn_id: str) -> bool:
        """Whether the turn was deleted (by `forget`) within its remembered time."""


@dataclass
class _Turn:
    info: TurnInfo
    tail: Tail


class MemoryEventLog(EventLog):
    """Turn log for one process: every reader follows the producer's own tail."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # An expired turn's readers learn its log is lost.
        self._turns: ExpiringMap[str, _Turn] = ExpiringMap(
            clock, on_expire=lambda _, turn: turn.tail.lose()
        )
        self._forgotten: ExpiringMap[str, bool] = ExpiringMap(clock)

    def _get(self, turn_id: str) -> _Turn | None:
        return self._turns.get(turn_id)

    def frames(self, turn_id: str) -> list[bytes]:
        """The frames the turn's log holds (none once it expired)."""
        turn = self._get(turn_id)
        return list(turn.tail.frames) if turn else []

    def create(self, info: TurnInfo, start: bytes, ttl: float) -> Tail:
        tail = Tail([start])
        self._turns.set(info.id, _Turn(info, tail), ttl)
        return tail

    def append(self, turn_id: str, tail: Tail, frames: list[bytes]) -> None:
        tail.extend(frames)

    def finish(self, turn_id: str, tail: Tail, frames: list[bytes], ttl: float) -> None:
        tail.extend(frames, done=True)
        self._turns.expire(turn_id, ttl)

    def open(self, turn_id: str) -> Tail | None:
        turn = self._get(turn_id)
        if turn is None:
            return None
        turn.tail.join()
        return turn.tail

    def close(self, turn_id: str, tail: Tail) -> None:
        tail.leave()

    def info(self, turn_id: str) -> TurnInfo | None:
        turn = self._get(turn_id)
        return turn.info if turn else None

    def ping(self) -> None:
        """Memory always answers."""

    def forget(self, turn_id: str, remember: float) -> None:
        turn = self._turns.pop(turn_id)
        if turn is not None:
            turn.tail.lose()
        self._forgotten.set(turn_id, True, remember)

    def forgotten(self, turn_id: str) -> bool:
        return self._forgotten.get(turn_id) is not None
