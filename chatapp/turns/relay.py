"""The turn machinery of one worker: start, cancel, follow, drain.

Data flows one way: a started turn's producer writes frames to the turn log;
readers follow the log; the end of a turn is a `TurnEnd` record handed to
the `on_end` hooks (limits, metrics, logs). Nothing here knows Flask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent

from chatapp.errors import ProviderError
from chatapp.errors import StoreError
from chatapp.settings import Settings
from chatapp.store.conversations import History
from chatapp.store.coordination import Coordination
from chatapp.store.events import EventLog
from chatapp.store.tail import Tail
from chatapp.turns.model import TurnEnd
from chatapp.turns.model import TurnInfo
from chatapp.turns.produce import produce
from chatapp.turns.produce import replay
from chatapp.turns.produce import start_frame
from chatapp.turns.run import Parts
from chatapp.turns.run import Run
from chatapp.turns.run import TurnCancelled
from chatapp.turns.run import interrupt
from chatapp.turns.supervise import Supervisor
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Upstream
from chatapp.upstream.moderation import Moderator

log = logging.getLogger(__name__)

SHUTDOWN_ERROR = ProviderError(
    "internal", "The server is restarting; ask again.", retryable=True
)


class Relay:
    """Run turns in this worker and hand out their tails to readers."""

    def __init__(
        self,
        events: EventLog,
        coordination: Coordination,
        history: History,
        provider: Upstream,
        settings: Settings,
        moderator: Moderator | None = None,
    ) -> None:
        self.events = events
        self.coordination = coordination
        self.history = history
        self.provider = provider
        self.settings = settings
        self.runs: dict[str, Run] = {}
        self.on_end: list[Callable[[TurnEnd], None]] = []
        self.parts = Parts(events, history, provider, settings, self._ended, moderator)
        self.supervisor = Supervisor(
            self.runs, events, coordination, settings, self._cancel_local
        )
        self.draining = False
        coordination.on_cancel(self._cancel_local)
        coordination.on_resubscribe(self._recheck_cancels)

    @property
    def running(self) -> int:
        """How many turns this worker is producing now."""
        return len(self.runs)

    def start(
        self,
        info: TurnInfo,
        request: ChatRequest,
        cache_key: str | None = None,
        sources: list[dict[str, Any]] | None = None,
    ) -> None:
        """Log the turn and start generating its answer at once."""
        s = self.settings
        tail = self.events.create(
            info,
            start_frame(info, s, cached=False, request=request),
            s.running_ttl,
        )
        run = Run(info, tail, time.monotonic() + s.upstream_total_timeout, cache_key)
        run.sources = sources
        self.runs[info.id] = run
        run.greenlet = gevent.spawn(self._produce, run, request)
        self.supervisor.watch()

    def _produce(self, run: Run, request: ChatRequest) -> None:
        try:
            produce(self.parts, run, request)
        finally:
            self.runs.pop(run.info.id, None)

    def replay(
        self,
        info: TurnInfo,
        cached: str,
        model: str = "",
        sources: list[dict[str, Any]] | None = None,
    ) -> None:
        """Serve a cached answer as a complete turn, without a provider call."""
        replay(self.parts, info, cached, model, sources)

    def _ended(self, end: TurnEnd) -> None:
        self.runs.pop(end.info.id, None)
        if not end.output_chars:
            # No answer was stored, which would have renewed the conversation:
            # its TTL counts from the end of this turn all the same.
            try:
                self.history.touch(end.info.conversation_id)
            except StoreError:
                log.warning("turn %s: could not renew its conversation", end.info.id)
        for hook in self.on_end:
            try:
                hook(end)
            except Exception:
                log.exception("turn %s: end hook failed", end.info.id)

    def cancel(self, turn_id: str) -> None:
        """Cancel a turn wherever it runs; a finished turn is left alone."""
        if turn_id in self.runs:
            self._cancel_local(turn_id)
        else:
            self.coordination.request_cancel(turn_id)

    def _cancel_local(self, turn_id: str, reason: str = "cancelled") -> None:
        run = self.runs.get(turn_id)
        if run is None or run.cancel_reason:
            return
        run.cancel_reason = reason
        run.cancel_at = time.monotonic()
        # Interrupt only a wait on the provider; a write to the turn log is
        # left to finish, and the producer checks the flag right after it.
        interrupt(run, TurnCancelled(reason))

    def _recheck_cancels(self) -> None:
        """Look up cancels that may have been asked while we did not listen."""
        ids = list(self.runs)
        try:
            asked = self.coordination.cancels_requested(ids)
        except StoreError:
            return
        for turn_id, yes in zip(ids, asked, strict=True):
            if yes:
                self._cancel_local(turn_id)

    def info(self, turn_id: str) -> TurnInfo | None:
        """Return a turn's facts, or None when it is unknown or expired."""
        return self.events.info(turn_id)

    def open(self, turn_id: str) -> Tail | None:
        """Follow a turn from here; None when it is unknown or expired."""
        return self.events.open(turn_id)

    def close(self, turn_id: str, tail: Tail) -> None:
        """Stop following a turn opened with `open`."""
        self.events.close(turn_id, tail)

    def drain(self, seconds: float) -> None:
        """Let running turns finish for `seconds`, then end the rest."""
        self.draining = True
        deadline = time.monotonic() + seconds
        while self.runs and time.monotonic() < deadline:
            gevent.sleep(min(0.1, seconds))
        for turn_id in self.runs:
            log.warning("turn %s: ended by shutdown", turn_id)
        # A producer busy writing is not interrupted; ask again until it ends.
        end = time.monotonic() + 5
        while self.runs and time.monotonic() < end:
            for run in list(self.runs.values()):
                interrupt(run, SHUTDOWN_ERROR)
            gevent.sleep(0.05)
