"""The producer: provider chunks in, frames into the turn log, one `done` out.

A turn's producer is a greenlet of its own, not tied to any reader: it
starts at the POST, turns each batch of provider text into its final frame
bytes once, and ends the turn with exactly one `done`. It waits on the
provider without a timer of its own; the supervisor's watchdog interrupts
it (see supervise.py), as do cancels.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.lock import Semaphore

from chatapp import sse
from chatapp.errors import ContentBlocked
from chatapp.errors import ProviderError
from chatapp.errors import StoreError
from chatapp.store.conversations import History
from chatapp.store.conversations import StoredMessage
from chatapp.store.events import EventLog
from chatapp.store.tail import Tail
from chatapp.text import scrub
from chatapp.turns.model import TurnEnd
from chatapp.turns.model import TurnInfo
from chatapp.turns.model import TurnSettings
from chatapp.upstream.base import Attempt
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Chunk
from chatapp.upstream.base import Upstream
from chatapp.upstream.moderation import Moderator
from chatapp.upstream.moderation import unavailable

log = logging.getLogger(__name__)
# Lifecycle lines go to the logger the JSON log set-up names for turns.
turn_log = logging.getLogger("chatapp.turn")

# `max_tokens` asks the provider to stop; this makes sure of it. A provider
# that streams on past the bound (broken, hostile, or a proxy in between) is
# cut off: the answer ends with `length` and the upstream is closed. A token
# is about four characters of prose; allow eight times that, and never less
# than a full page of text.
CHARS_PER_TOKEN_BOUND = 32
MIN_ANSWER_CHARS = 64 * 1024


def answer_char_limit(max_output_tokens: int) -> int:
    """Return the most characters an answer bounded by `max_output_tokens` holds."""
    return max(MIN_ANSWER_CHARS, max_output_tokens * CHARS_PER_TOKEN_BOUND)


INTERNAL_ERROR = {
    "code": "internal",
    "message": "Something went wrong on our side.",
    "retryable": True,
}


class TurnCancelled(Exception):
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
    settings: TurnSettings
    ended: Callable[[TurnEnd], None]
    moderator: Moderator | None = None


def produce(parts: Parts, run: Run, request: ChatRequest) -> None:
    """Generate one turn's answer into its log, ending with exactly one done."""
    answer = Answer(parts, run, answer_char_limit(request.max_output_tokens))
    stream = None
    try:
        run.raise_if_cancelled()
        if parts.moderator is not None:
            moderate(parts.moderator, run, request)
        run.attempt_at = time.monotonic()
        stream = parts.provider.stream(request)
        run.in_upstream = True
        for chunk in stream:
            run.in_upstream = False
            if answer.take(chunk):
                break  # a runaway answer: cut here, and close the upstream
            run.raise_if_cancelled()
            run.in_upstream = True
        run.in_upstream = False
    except TurnCancelled as exc:
        answer.finish = "cancelled"
        log.info("turn %s %s", run.info.id, exc)
    except ContentBlocked as exc:
        answer.fail(exc, "content_filter")
    except ProviderError as exc:
        answer.fail(exc)
    except StoreError:
        log.exception("turn %s: the turn log failed", run.info.id)
        answer.finish, answer.error = "error", INTERNAL_ERROR
    except Exception:
        log.exception("turn %s failed", run.info.id)
        answer.finish, answer.error = "error", INTERNAL_ERROR
    finally:
        run.in_upstream = False
        if stream is not None:
            # Closing the iterator closes the upstream response at once,
            # whatever stopped us: cancel, timeout or error.
            stream.close()
    answer.close()


class Answer:
    """What a turn has produced so far, written to its log as it comes."""

    # Slots: `take` runs per chunk, and slot attributes are the cheap ones.
    __slots__ = (
        "append",
        "chars",
        "error",
        "finish",
        "first_token",
        "input_tokens",
        "last_text",
        "limit",
        "max_gap",
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

    def fail(self, exc: ProviderError, finish: str = "error") -> None:
        """End the answer with SPEC's error event for `exc`."""
        self.finish = finish
        retryable = exc.retryable and finish == "error"
        self.error = {"code": exc.code, "message": exc.message, "retryable": retryable}

    def close(self) -> None:
        """Write the end: error, usage, done; then history, limits, cache."""
        parts, run = self.parts, self.run
        cancel_seconds = None
        if self.finish == "cancelled" and run.cancel_reason == "cancelled":
            cancel_seconds = time.monotonic() - run.cancel_at
        end = TurnEnd(
            run.info,
            self.finish,
            str(self.error["code"]) if self.error else None,
            self.input_tokens,
            self.output_tokens,
            self.chars,
            self.first_token,
            self.max_gap if len(self.pieces) > 1 else None,
            cancel_seconds,
        )
        text = "".join(self.pieces)
        if run.cache_key and self.finish == "stop" and text:
            _cache(parts, run.cache_key, text, self.input_tokens, self.output_tokens)
        # Numbered under the lock: a `thinking` status being written by the
        # supervisor lands before them.
        with run.lock:
            close_turn(parts, end, run.tail, text, self._final())

    def _final(self) -> list[bytes]:
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


def moderate(moderator: Moderator, run: Run, request: ChatRequest) -> None:
    """Check the user's message before the model sees it; raise to end the turn.

    A cancel interrupts the check as it would the model. Whatever ends the
    check early (the watchdog too) is `moderation_unavailable`: fail closed.
    """
    run.in_upstream = True
    try:
        moderator.check(request.messages[-1].content)
    except ContentBlocked:
        raise
    except ProviderError as exc:
        if exc.code == "moderation_unavailable":
            raise
        raise unavailable() from exc
    finally:
        run.in_upstream = False
    run.last_read = time.monotonic()  # the model's silence counts from here


def replay(parts: Parts, info: TurnInfo, cached: str) -> None:
    """Serve a cached answer as a complete turn, without a provider call."""
    s = parts.settings
    answer = json.loads(cached)
    start = start_frame(info, s, cached=True)
    tail = parts.events.create(info, start, s.stream_ttl + 5)
    text = answer["text"]
    final = [sse.delta(2, text), sse.frame(3, "done", {"finish_reason": "stop"})]
    # Nothing was spent upstream: no usage event, and zero to settle.
    end = TurnEnd(info, "stop", None, 0, 0, len(text), None, cached=True)
    close_turn(parts, end, tail, text, final)


def start_frame(
    info: TurnInfo,
    settings: TurnSettings,
    *,
    cached: bool,
    request: ChatRequest | None = None,
) -> bytes:
    """Encode a turn's first event, naming the model asked first."""
    fallback = request is not None and request.route == "fallback"
    data = {
        "id": info.id,
        "conversation_id": info.conversation_id,
        "provider": settings.fallback_provider if fallback else settings.provider,
        "model": request.model if request is not None else settings.model,
        "cached": cached,
    }
    return sse.frame(1, "start", data)


def close_turn(
    parts: Parts, end: TurnEnd, tail: Tail, text: str, final: list[bytes]
) -> None:
    """Record the answer and the end, then let `done` out.

    History and limits come before `done`, so that a client that saw `done`
    finds its answer stored and its stream slot free.
    """
    info = end.info
    if text:
        try:
            text.encode()
        except UnicodeEncodeError:
            text = scrub(text)
        try:
            parts.history.append(
                info.conversation_id, StoredMessage("assistant", text, time.time())
            )
        except StoreError:
            log.exception("turn %s: could not store its answer", info.id)
    try:
        parts.ended(end)
    except Exception:
        log.exception("turn %s: an end hook failed", info.id)
    try:
        parts.events.finish(info.id, tail, final, parts.settings.stream_ttl)
    except StoreError:
        log.exception("turn %s: could not write its end", info.id)


def _cache(
    parts: Parts,
    key: str,
    text: str,
    input_tokens: int | None,
    output_tokens: int | None,
) -> None:
    cached = {"text": text, "input": input_tokens, "output": output_tokens}
    try:
        parts.history.cache_answer(key, json.dumps(cached), parts.settings.cache_ttl)
    except StoreError:
        log.warning("could not cache an answer")
