"""A turn's frames in this process, and the readers waiting on them.

Frame n (SSE id n) sits at index n-1. The producer of a turn run here, or the
worker's Redis follower for a turn run elsewhere, extends the tail; readers
send `frames[after:]` and wait for more.
"""

from __future__ import annotations

import time

import gevent.event


class Tail:
    """Frames 1..n of one turn, and the wake-up for readers that follow it."""

    __slots__ = ("_changed", "done", "frames", "lost", "readers", "seen")

    def __init__(self, frames: list[bytes] | None = None, *, done: bool = False):
        self.frames: list[bytes] = frames if frames is not None else []
        self.done = done
        # Shared storage failed while this tail was followed from elsewhere:
        # what comes next is unknown, so readers end without inventing ids.
        self.lost = False
        self.readers = 0
        self.seen = time.monotonic()  # when a reader was last here
        self._changed = gevent.event.Event()

    def extend(self, frames: list[bytes], *, done: bool = False) -> None:
        """Add the next frames and wake every reader waiting for them."""
        self.frames.extend(frames)
        self.done = self.done or done
        self._wake()

    def lose(self) -> None:
        """Mark the rest of this turn as unknowable here and wake readers."""
        self.lost = True
        self._wake()

    def wait(self, timeout: float) -> None:
        """Block this greenlet until the tail changes or `timeout` passes."""
        self._changed.wait(timeout)

    def join(self) -> None:
        """Count a reader in."""
        self.readers += 1

    def leave(self) -> None:
        """Count a reader out, remembering when one was last here."""
        self.readers -= 1
        self.seen = time.monotonic()

    def _wake(self) -> None:
        # Wake the readers waiting now; later ones wait on a fresh event.
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()
