"""A turn's frames in this process, and the readers waiting on them.

Frame n (SSE id n) sits at index n-1. The producer of a turn run here, or the
worker's Redis follower for a turn run elsewhere, extends the tail; readers
send `frames[after:]` and wait for more.

A wait is the hot path of every token (a reader sleeps between two), so it
is gevent's lowest-level parts: the reader parks on a `Waiter`, which a
change wakes through the hub, and a timer ends the wait. A streaming reader
keeps both for its whole life (`Sleeper`): no event, no timeout object and
no timer is made per token.
"""

from __future__ import annotations

import time
from typing import Any

from gevent.hub import Waiter
from gevent.hub import get_hub


class Tail:
    """Frames 1..n of one turn, and the wake-up for readers that follow it."""

    __slots__ = ("_waiting", "done", "frames", "lost", "readers", "seen")

    def __init__(self, frames: list[bytes] | None = None, *, done: bool = False):
        self.frames: list[bytes] = frames if frames is not None else []
        self.done = done
        # Shared storage failed while this tail was followed from elsewhere:
        # what comes next is unknown, so readers end without inventing ids.
        self.lost = False
        self.readers = 0
        self.seen = time.monotonic()  # when a reader was last here
        self._waiting: list[Waiter] = []  # readers parked in a wait now

    def extend(self, frames: list[bytes], *, done: bool = False) -> None:
        """Add the next frames and wake every reader waiting for them."""
        self.frames.extend(frames)
        if done:
            self.done = True
        if self._waiting:
            self._wake()

    def lose(self) -> None:
        """Mark the rest of this turn as unknowable here and wake readers."""
        self.lost = True
        self._wake()

    def wait(self, timeout: float) -> None:
        """Block this greenlet until the tail changes or `timeout` passes."""
        hub = get_hub()
        timer = _timer(hub, timeout)
        try:
            self._park(Waiter(hub), timer)
        finally:
            timer.close()

    def join(self) -> None:
        """Count a reader in."""
        self.readers += 1

    def leave(self) -> None:
        """Count a reader out, remembering when one was last here."""
        self.readers -= 1
        self.seen = time.monotonic()

    def _park(self, waiter: Waiter, timer: object) -> None:
        # Whatever comes first switches back here: the tail's wake-up or the
        # timer. A wake-up meant for an earlier wait is dropped by clear().
        waiter.clear()
        self._waiting.append(waiter)
        # again(), not start(): libev leaves a one-shot timer that fired with
        # a stale expiry, which would end every later wait at once.
        timer.again(waiter.switch, None)  # type: ignore[attr-defined]
        try:
            waiter.get()
        finally:
            timer.stop()  # type: ignore[attr-defined]
            try:
                self._waiting.remove(waiter)
            except ValueError:
                pass  # woken by the tail: already taken off

    def _wake(self) -> None:
        # Wake the readers parked now, from the hub (as gevent's Event does);
        # later ones park afresh.
        waiting, self._waiting = self._waiting, []
        if waiting:
            run = get_hub().loop.run_callback
            for waiter in waiting:
                run(waiter.switch, None)


class Sleeper:
    """One reader's reusable wait on a tail: nothing made per wait.

    Waits last at most `timeout` seconds each. `close()` when done.
    """

    __slots__ = ("_timer", "_waiter")

    def __init__(self, timeout: float) -> None:
        hub = get_hub()
        self._waiter = Waiter(hub)
        self._timer = _timer(hub, timeout)

    def wait(self, tail: Tail) -> None:
        """Block this greenlet until `tail` changes or the timeout passes."""
        tail._park(self._waiter, self._timer)

    def close(self) -> None:
        """Free the timer."""
        self._timer.close()


def _timer(hub: Any, timeout: float) -> Any:
    """A timer that each `again()` starts afresh for `timeout` seconds."""
    after = max(0.0, timeout)
    return hub.loop.timer(after, after)
