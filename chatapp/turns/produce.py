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
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Provider
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
        "cache_key",
        "cancel_at",
        "cancel_reason",
        "deadline",
        "greenlet",
        "in_upstream",
        "info",
        "last_read",
        "tail",
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
        self.last_read = time.monotonic()

    def raise_if_cancelled(self) -> None:
        if self.cancel_reason:
            raise TurnCancelled(self.cancel_reason)


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
    provider: Provider
    settings: TurnSettings
    ended: Callable[[TurnEnd], None]
    moderator: Moderator | None = None


def produce(parts: Parts, run: Run, request: ChatRequest) -> None:
    """Generate one turn's answer into its log, ending with exactly one done."""
    info, tail = run.info, run.tail
    next_id = 2  # the start frame is 1
    pieces: list[str] = []
    chars = 0
    finish = "stop"
    error: dict[str, Any] | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    first_token: float | None = None
    max_gap: float | None = None
    last_text = 0.0
    started = time.monotonic()
    limit = answer_char_limit(request.max_output_tokens)
    stream = None
    try:
        run.raise_if_cancelled()
        if parts.moderator is not None:
            moderate(parts.moderator, run, request)
        stream = parts.provider.stream(request)
        run.in_upstream = True
        for chunk in stream:
            run.in_upstream = False
            now = run.last_read = time.monotonic()
            text = chunk.text
            if chars + len(text) > limit:
                text = text[: limit - chars]
                finish = "length"
            if text:
                if first_token is None:
                    first_token = now - started
                    turn_log.info(
                        "turn.first_token",
                        extra={
                            "turn_id": info.id,
                            "ttft_ms": round(first_token * 1000, 1),
                        },
                    )
                elif now - last_text > (max_gap or 0.0):
                    max_gap = now - last_text
                last_text = now
                pieces.append(text)
                chars += len(text)
                parts.events.append(info.id, tail, [sse.delta(next_id, text)])
                next_id += 1
            if chunk.input_tokens is not None:
                input_tokens = chunk.input_tokens
            if chunk.output_tokens is not None:
                output_tokens = chunk.output_tokens
            if finish == "length" and chars >= limit:
                break  # a runaway answer: cut here, and close the upstream
            if chunk.finish_reason:
                finish = chunk.finish_reason
            run.raise_if_cancelled()
            run.in_upstream = True
        run.in_upstream = False
    except TurnCancelled as exc:
        finish = "cancelled"
        log.info("turn %s %s", info.id, exc)
    except ContentBlocked as exc:
        finish = "content_filter"
        error = {"code": exc.code, "message": exc.message, "retryable": False}
    except ProviderError as exc:
        finish = "error"
        error = {"code": exc.code, "message": exc.message, "retryable": exc.retryable}
    except StoreError:
        log.exception("turn %s: the turn log failed", info.id)
        finish, error = "error", INTERNAL_ERROR
    except Exception:
        log.exception("turn %s failed", info.id)
        finish, error = "error", INTERNAL_ERROR
    finally:
        run.in_upstream = False
        if stream is not None:
            # Closing the iterator closes the upstream response at once,
            # whatever stopped us: cancel, timeout or error.
            stream.close()
    cancel_seconds = None
    if finish == "cancelled" and run.cancel_reason == "cancelled":
        cancel_seconds = time.monotonic() - run.cancel_at
    final = []
    if error is not None:
        final.append(sse.frame(next_id, "error", error))
        next_id += 1
    if input_tokens is not None or output_tokens is not None:
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        final.append(sse.frame(next_id, "usage", usage))
        next_id += 1
    final.append(sse.frame(next_id, "done", {"finish_reason": finish}))
    end = TurnEnd(
        info,
        finish,
        str(error["code"]) if error else None,
        input_tokens,
        output_tokens,
        chars,
        first_token,
        max_gap,
        cancel_seconds,
    )
    text = "".join(pieces)
    if run.cache_key and finish == "stop" and text:
        _cache(parts, run.cache_key, text, input_tokens, output_tokens)
    close_turn(parts, end, tail, text, final)


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


def start_frame(info: TurnInfo, settings: TurnSettings, *, cached: bool) -> bytes:
    """Encode a turn's first event."""
    data = {
        "id": info.id,
        "conversation_id": info.conversation_id,
        "provider": settings.provider,
        "model": settings.model,
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
                info.conversation_id,
                StoredMessage("assistant", text, time.time(), info.id),
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
