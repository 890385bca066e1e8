"""A turn's answer as it comes: text, reasoning, new attempts, usage.

The producer (produce.py) feeds it each chunk; it writes the frames to the
turn's log as they come and keeps what the end of the turn needs. `take`
runs once per chunk: the hot path of every answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from chatapp import sse
from chatapp.errors import ProviderError
from chatapp.turns.run import Parts
from chatapp.turns.run import Run
from chatapp.upstream.base import Attempt
from chatapp.upstream.base import Chunk

# Lifecycle lines go to the logger the JSON log set-up names for turns.
turn_log = logging.getLogger("chatapp.turn")


class Answer:
    """What a turn has produced so far, written to its log as it comes."""

    # Slots: `take` runs per chunk, and slot attributes are the cheap ones.
    __slots__ = (
        "append",
        "cached_input_tokens",
        "chars",
        "error",
        "failed_usage",
        "finish",
        "first_token",
        "input_tokens",
        "last_text",
        "limit",
        "max_gap",
        "model",
        "output_tokens",
        "parts",
        "pieces",
        "run",
        "thought_chars",
    )

    def __init__(self, parts: Parts, run: Run, limit: int) -> None:
        self.parts = parts
        self.run = run
        self.append = parts.events.append
        self.limit = limit
        self.pieces: list[str] = []
        self.chars = 0
        self.thought_chars = 0
        self.finish = "stop"
        self.error: dict[str, Any] | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        # Of input_tokens, those read from the provider's prompt cache.
        self.cached_input_tokens: int | None = None
        # The model the current attempt asks: "" for the one the turn was
        # admitted at, until a retry names another (the fallback).
        self.model = ""
        # What failed attempts reported spending, by model: it counts too (SPEC).
        self.failed_usage: list[tuple[str, int, int]] = []
        self.first_token: float | None = None
        self.max_gap = 0.0
        self.last_text = 0.0

    def take(self, chunk: Chunk | Attempt) -> bool:
        """Relay one chunk; True when the answer hit its bound and must stop."""
        run = self.run
        now = run.last_read = time.monotonic()
        if isinstance(chunk, Attempt):
            self._retrying(chunk, now)
            return False
        if chunk.reasoning:
            self._reasoning(chunk.reasoning)
        text = chunk.text
        if text:
            if self.chars + len(text) > self.limit:
                text = text[: self.limit - self.chars]
                self.finish = "length"
            if self.first_token is None:
                self._first(text, now)
            else:
                # The hot path. After the first delta nobody else writes
                # (the supervisor's `thinking` comes only before it): no lock.
                if now - self.last_text > self.max_gap:
                    self.max_gap = now - self.last_text
                self.last_text = now
                self.pieces.append(text)
                self.chars += len(text)
                frame = sse.delta(run.next_id, text)
                run.next_id += 1
                self.append(run.info.id, run.tail, [frame])
        if chunk.input_tokens is not None:
            self.input_tokens = chunk.input_tokens
        if chunk.output_tokens is not None:
            self.output_tokens = chunk.output_tokens
        if chunk.cached_input_tokens is not None:
            self.cached_input_tokens = chunk.cached_input_tokens
        if self.finish == "length" and self.chars >= self.limit:
            return True
        if chunk.finish_reason:
            self.finish = chunk.finish_reason
        return False

    def _first(self, text: str, now: float) -> None:
        """Write the first delta, after any `thinking` the supervisor writes."""
        run = self.run
        run.answering = run.delta_sent = True
        self.first_token = now - run.started_at
        turn_log.info(
            "turn.first_token",
            extra={
                "turn_id": run.info.id,
                "ttft_ms": round(self.first_token * 1000, 1),
            },
        )
        self.last_text = now
        self.pieces.append(text)
        self.chars += len(text)
        with run.lock:
            frame = sse.delta(run.next_id, text)
            run.next_id += 1
            self.append(run.info.id, run.tail, [frame])

    def _retrying(self, attempt: Attempt, now: float) -> None:
        """Announce a new upstream attempt; its first-token wait starts now."""
        run = self.run
        run.attempt_at = now
        run.answering = False
        if self.input_tokens is not None or self.output_tokens is not None:
            spent = (self.model, self.input_tokens or 0, self.output_tokens or 0)
            self.failed_usage.append(spent)
            self.input_tokens = self.output_tokens = None
        self.model = attempt.model  # what answers is priced as this model
        turn_log.info(
            "turn.retry",
            extra={
                "turn_id": run.info.id,
                "attempt": attempt.number,
                "provider": attempt.provider,
                "model": attempt.model,
                "reason": attempt.reason,
            },
        )
        status = {
            "state": "retrying",
            "attempt": attempt.number,
            "provider": attempt.provider,
            "model": attempt.model,
        }
        run.write(self.parts.events, "status", status)

    def _reasoning(self, reasoning: str) -> None:
        """Say `thinking` once; relay the reasoning itself only if asked to."""
        run, events = self.run, self.parts.events
        run.answering = True
        if not run.thinking_sent and not run.delta_sent:
            run.thinking_sent = True
            run.write(events, "status", {"state": "thinking"})
        if self.parts.settings.show_reasoning and self.thought_chars < self.limit:
            thought = reasoning[: self.limit - self.thought_chars]
            self.thought_chars += len(thought)
            run.write(events, "reasoning", {"text": thought})

    def settle_usage(self) -> None:
        """Add what failed attempts reported to what the last one did."""
        if self.failed_usage:
            self.input_tokens = (self.input_tokens or 0) + sum(
                spent for _, spent, _ in self.failed_usage
            )
            self.output_tokens = (self.output_tokens or 0) + sum(
                spent for _, _, spent in self.failed_usage
            )

    def fail(self, exc: ProviderError, finish: str = "error") -> None:
        """End the answer with SPEC's error event for `exc`."""
        self.finish = finish
        retryable = exc.retryable and finish == "error"
        self.error = {"code": exc.code, "message": exc.message, "retryable": retryable}

    def final_frames(self) -> list[bytes]:
        """Encode the end: error, usage, done; numbered after all else."""
        final = []
        next_id = self.run.next_id
        if self.error is not None:
            final.append(sse.frame(next_id, "error", self.error))
            next_id += 1
        if self.input_tokens is not None or self.output_tokens is not None:
            usage = {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
            }
            final.append(sse.frame(next_id, "usage", usage))
            next_id += 1
        final.append(sse.frame(next_id, "done", {"finish_reason": self.finish}))
        return final
