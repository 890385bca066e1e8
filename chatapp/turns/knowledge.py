"""Site knowledge for a turn: retrieve its sources, tell the model, never fail it.

Retrieval happens when the turn starts, before the answer cache is looked
up: the sources' text becomes part of the system prompt, which the cache key
covers, so an edited page is never answered from a stale cached reply.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from collections.abc import Sequence

from chatapp.knowledge.index import Index
from chatapp.knowledge.retrieve import STRICT
from chatapp.knowledge.retrieve import STRICT_NOTHING_FOUND
from chatapp.knowledge.retrieve import Retrieved
from chatapp.knowledge.retrieve import retrieve
from chatapp.store.conversations import StoredMessage
from chatapp.upstream.base import ChatRequest

log = logging.getLogger(__name__)
# Lifecycle lines go to the logger the JSON log set-up names for turns.
turn_log = logging.getLogger("chatapp.turn")

# What a retrieval came to, for the metrics: sources found, none, failed, or
# skipped (the index failed moments ago: turns go on without waiting on it).
FOUND = "sources"
NONE = "none"
FAILED = "failed"
SKIPPED = "skipped"
# After a failure, turns skip the index this long: an unreachable Postgres
# costs its connect timeout once, not on every turn.
PAUSE_AFTER_FAILURE = 10.0


class Knowledge:
    """This worker's way to a turn's sources: one index, the mode, the bound."""

    def __init__(
        self,
        index: Index,
        *,
        mode: str,
        max_chars: int,
        observe: Callable[[str, float], None] = lambda outcome, seconds: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self.clock = clock
        self.mode = mode
        self.max_chars = max_chars
        self.observe = observe
        self.paused_until = 0.0

    def consult(
        self,
        request: ChatRequest,
        *,
        page_url: str | None,
        earlier: Sequence[StoredMessage] = (),
        turn_id: str | None = None,
    ) -> tuple[ChatRequest, Retrieved]:
        """Find the turn's sources; return the request as the model must see it.

        A failing index (a locked or unreadable file, Postgres away) never
        fails the turn: it goes on without sources, logged and counted.
        """
        started = time.perf_counter()
        if self.clock() < self.paused_until:
            found, outcome = self._without(), SKIPPED
        else:
            found, outcome = self._retrieve(request, page_url, earlier)
        seconds = time.perf_counter() - started
        self.observe(outcome, seconds)
        turn_log.info(
            "turn.sources",
            extra={
                "turn_id": turn_id,
                "outcome": outcome,
                "sources": len(found.sources),
                "retrieval_ms": round(seconds * 1000, 1),
            },
        )
        if not found.instructions:
            return request, found
        system = f"{request.system}\n\n{found.instructions}".strip()
        return dataclasses.replace(request, system=system), found

    def _retrieve(
        self,
        request: ChatRequest,
        page_url: str | None,
        earlier: Sequence[StoredMessage],
    ) -> tuple[Retrieved, str]:
        try:
            found = retrieve(
                self.index,
                request.messages[-1].content,
                previous=previous_question(earlier),
                page_url=page_url,
                max_chars=self.max_chars,
                mode=self.mode,
            )
        except Exception:  # any engine's error; gevent's Timeout is no Exception
            log.exception("knowledge: retrieval failed; the turn goes on without")
            self.paused_until = self.clock() + PAUSE_AFTER_FAILURE
            return self._without(), FAILED
        return found, FOUND if found.sources else NONE

    def _without(self) -> Retrieved:
        """What a turn gets when the index could not be asked: no sources."""
        return Retrieved((), STRICT_NOTHING_FOUND if self.mode == STRICT else "")


def previous_question(earlier: Sequence[StoredMessage]) -> str | None:
    """Return the visitor's question before this one, if any."""
    for message in reversed(earlier):
        if message.role == "user":
            return message.content
    return None
