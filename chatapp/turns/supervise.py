"""The per-worker supervisor: watchdog, orphans and the producers' lease.

One greenlet watches every turn this worker produces: it ends a turn whose
provider went silent or ran past the whole-turn deadline, cancels a turn
nobody reads any more, and renews the lease that tells other hosts this
worker is still producing. One timer for all turns, instead of one per
socket read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent

from chatapp import sse
from chatapp.errors import ProviderError
from chatapp.errors import StoreError
from chatapp.settings import Settings
from chatapp.settings.value import LEASE_SECONDS
from chatapp.store.coordination import Coordination
from chatapp.store.events import EventLog
from chatapp.turns.run import Run
from chatapp.turns.run import TurnCancelled
from chatapp.turns.run import interrupt

log = logging.getLogger(__name__)

SHARED_EVERY = 1.0  # lease and orphan checks touch shared storage this often
# A model silent this long before its first text gets `status` `thinking`.
THINKING_AFTER = 1.0


class Supervisor:
    """Watch this worker's running turns while there are any."""

    def __init__(
        self,
        runs: dict[str, Run],
        events: EventLog,
        coordination: Coordination,
        settings: Settings,
        cancel: Callable[[str, str], None],
    ) -> None:
        self._runs = runs
        self._events = events
        self._coordination = coordination
        self._settings = settings
        self._cancel = cancel
        self._greenlet: gevent.Greenlet | None = None
        self._lease_at = -SHARED_EVERY
        s = settings
        self.tick = max(
            0.05,
            min(
                THINKING_AFTER / 2,
                s.upstream_idle_timeout / 4,
                s.upstream_first_token_timeout / 4,
                s.orphan_seconds / 4,
            ),
        )

    def watch(self) -> None:
        """Make sure the watch runs, and that this worker's lease is fresh."""
        if time.monotonic() - self._lease_at >= SHARED_EVERY:
            self._renew_lease()
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        shared_at = time.monotonic()
        while self._runs:
            gevent.sleep(self.tick)
            now = time.monotonic()
            self._watchdog(now)
            if now - shared_at >= SHARED_EVERY:
                shared_at = now
                self._renew_lease()
                self._orphans(now)

    def _watchdog(self, now: float) -> None:
        s = self._settings
        for run in list(self._runs.values()):
            if now >= run.deadline:
                interrupt(
                    run,
                    ProviderError(
                        "provider_timeout",
                        "The answer took longer than the server allows.",
                        retryable=True,
                    ),
                )
            elif not run.in_upstream:
                continue
            elif run.answering:
                # Something came: a silence (keep-alives count as life).
                if now - run.last_read >= s.upstream_idle_timeout:
                    interrupt(
                        run,
                        ProviderError(
                            "provider_timeout",
                            "The provider went silent.",
                            retryable=True,
                        ),
                    )
            elif now - run.attempt_at >= s.upstream_first_token_timeout:
                interrupt(
                    run,
                    ProviderError(
                        "provider_timeout",
                        "The provider did not start answering in time.",
                        retryable=True,
                    ),
                )
            elif not run.thinking_sent and now - run.started_at >= THINKING_AFTER:
                self._thinking(run)

    def _thinking(self, run: Run) -> None:
        """Say that a silent model is thinking, once, before any text.

        The producer waits on its provider and holds no lock: take it now, so
        that whatever the producer writes next is numbered after the status.
        """
        if not run.lock.acquire(blocking=False):
            return  # the producer is writing; look again next tick
        run.thinking_sent = True

        def write() -> None:
            try:
                frame = sse.frame(run.next_id, "status", {"state": "thinking"})
                run.next_id += 1
                self._events.append(run.info.id, run.tail, [frame])
            except StoreError:
                log.warning("turn %s: could not write its status", run.info.id)
            finally:
                run.lock.release()

        gevent.spawn(write)

    def _orphans(self, now: float) -> None:
        orphan = self._settings.orphan_seconds
        alone = [
            run
            for run in list(self._runs.values())
            if run.tail.readers <= 0 and now - run.tail.seen >= orphan
        ]
        if not alone:
            return
        try:
            elsewhere = self._coordination.readers_elsewhere([r.info.id for r in alone])
        except StoreError:
            log.warning("supervisor: shared storage did not answer")
            return
        for run, read in zip(alone, elsewhere, strict=True):
            if read:
                run.tail.seen = now - orphan * 2 / 3  # look again in orphan/3
            else:
                log.info("turn %s: no reader for %.0fs", run.info.id, orphan)
                self._cancel(run.info.id, "orphaned")

    def _renew_lease(self) -> None:
        try:
            self._coordination.renew_lease(LEASE_SECONDS)
            self._lease_at = time.monotonic()
        except StoreError:
            log.warning("supervisor: could not renew this worker's lease")


__all__ = ["LEASE_SECONDS", "Supervisor", "TurnCancelled"]
