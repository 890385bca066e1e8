"""The turn log: each turn's frames, readable from any id, one contract.

A turn's producer is its log's only writer: it registers the turn with its
`start` frame, appends the frames that follow and finishes with the frames
that end in `done`. Readers `open` a turn and follow its `Tail`. Besides
frames the log carries the few facts a turn needs across workers: a cancel
request and whether readers elsewhere are still there.

`MemoryEventLog` serves one process; `RedisEventLog` (events_redis.py) shares
turns across workers and hosts.
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

    def request_cancel(self, turn_id: str) -> None:
        """Ask whichever process runs the turn to cancel it."""

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call `callback(turn_id)` in this process when a cancel is asked."""

    def cancels_requested(self, turn_ids: list[str]) -> list[bool]:
        """Tell, for each turn, whether a cancel was asked for."""

    def readers_elsewhere(self, turn_ids: list[str]) -> list[bool]:
        """Tell, for each turn, whether readers in other processes follow it."""

    def renew_lease(self, seconds: float) -> None:
        """Tell other processes this one still produces its turns."""

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
    cancel: bool = False


class MemoryEventLog:
    """Turn log for one process: every reader follows the producer's own tail."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # An expired turn's readers learn its log is lost.
        self._turns: ExpiringMap[str, _Turn] = ExpiringMap(
            clock, on_expire=lambda _, turn: turn.tail.lose()
        )
        self._listeners: list[Callable[[str], None]] = []
        self._forgotten: ExpiringMap[str, bool] = ExpiringMap(clock)

    def _get(self, turn_id: str) -> _Turn | None:
        return self._turns.get(turn_id)

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

    def request_cancel(self, turn_id: str) -> None:
        turn = self._get(turn_id)
        if turn is None:
            return
        turn.cancel = True
        for callback in self._listeners:
            callback(turn_id)

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)

    def cancels_requested(self, turn_ids: list[str]) -> list[bool]:
        return [bool((t := self._get(i)) and t.cancel) for i in turn_ids]

    def readers_elsewhere(self, turn_ids: list[str]) -> list[bool]:
        return [False] * len(turn_ids)  # there is no elsewhere

    def renew_lease(self, seconds: float) -> None:
        """Nothing to renew: producer and readers share this process."""

    def ping(self) -> None:
        """Memory always answers."""

    def forget(self, turn_id: str, remember: float) -> None:
        turn = self._turns.pop(turn_id)
        if turn is not None:
            turn.tail.lose()
        self._forgotten.set(turn_id, True, remember)

    def forgotten(self, turn_id: str) -> bool:
        return self._forgotten.get(turn_id) is not None
