"""A turn being produced in this worker, and what its producer writes to.

Below the producer (produce.py) and its answer accumulator (answer.py), so
that both, the relay and the supervisor share these without a loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.lock import Semaphore

from chatapp import sse
from chatapp.errors import ChatappError
from chatapp.settings import Settings
from chatapp.store.conversations import History
from chatapp.store.events import EventLog
from chatapp.store.tail import Tail
from chatapp.turns.model import TurnEnd
from chatapp.turns.model import TurnInfo
from chatapp.upstream.base import Upstream
from chatapp.upstream.moderation import Moderator


class TurnCancelled(ChatappError):
    """Raised inside a producer greenlet to stop its turn."""


class Run:
    """A turn being produced in this worker, and where it may be interrupted."""

    __slots__ = (
        "answering",
        "attempt_at",
        "cache_key",
        "cancel_at",
        "cancel_reason",
        "deadline",
        "delta_sent",
        "greenlet",
        "in_upstream",
        "info",
        "last_read",
        "lock",
        "next_id",
        "sources",
        "started_at",
        "tail",
        "thinking_sent",
    )

    def __init__(
        self, info: TurnInfo, tail: Tail, deadline: float, cache_key: str | None
    ) -> None:
        self.info = info
        self.tail = tail
        self.deadline = deadline
        self.cache_key = cache_key
        self.greenlet: gevent.Greenlet | None = None
        self.cancel_reason = ""
        self.cancel_at = 0.0
        self.in_upstream = False
        self.started_at = self.attempt_at = self.last_read = time.monotonic()
        self.answering = False  # text or reasoning came: idle timeout applies
        self.delta_sent = False
        self.thinking_sent = False
        self.next_id = 2  # the start frame is 1
        # Held while an event is numbered and written: the producer and the
        # supervisor (a `thinking` status after a silence) both write.
        self.lock = Semaphore()
        self.sources: list[dict[str, Any]] | None = None  # with site knowledge on

    def raise_if_cancelled(self) -> None:
        if self.cancel_reason:
            raise TurnCancelled(self.cancel_reason)

    def write(self, events: EventLog, event: str, data: dict[str, Any]) -> None:
        """Number and append one event; the lock keeps ids in order."""
        with self.lock:
            frame = sse.frame(self.next_id, event, data)
            self.next_id += 1
            events.append(self.info.id, self.tail, [frame])


def interrupt(run: Run, exc: Exception) -> None:
    """Raise `exc` in a producer, but only while it waits on its provider.

    Scheduled in the hub and checked when delivered, not when asked: by then
    the producer may be writing its end, which an exception must not cut.
    """

    def deliver() -> None:
        greenlet = run.greenlet
        if run.in_upstream and greenlet is not None and not greenlet.dead:
            greenlet.throw(exc)

    gevent.get_hub().loop.run_callback(deliver)


@dataclass(frozen=True, slots=True)
class Parts:
    """What a producer writes to: the turn log, history and the end hooks."""

    events: EventLog
    history: History
    provider: Upstream
    settings: Settings
    ended: Callable[[TurnEnd], None]
    moderator: Moderator | None = None
