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
from typing import Any

from chatapp import sse
from chatapp.errors import ContentBlocked
from chatapp.errors import ProviderError
from chatapp.errors import StoreError
from chatapp.settings import Settings
from chatapp.store.conversations import StoredMessage
from chatapp.store.tail import Tail
from chatapp.text import scrub
from chatapp.turns.answer import Answer
from chatapp.turns.model import TurnEnd
from chatapp.turns.model import TurnInfo
from chatapp.turns.run import Parts
from chatapp.turns.run import Run
from chatapp.turns.run import TurnCancelled
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.moderation import Moderator
from chatapp.upstream.moderation import unavailable

log = logging.getLogger(__name__)

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


def produce(parts: Parts, run: Run, request: ChatRequest) -> None:
    """Generate one turn's answer into its log, ending with exactly one done."""
    answer = Answer(parts, run, answer_char_limit(request.max_output_tokens))
    stream = None
    try:
        run.raise_if_cancelled()
        if parts.moderator is not None:
            moderate(parts.moderator, run, request)
        if run.sources is not None:
            with run.lock:  # numbered among a supervisor's `thinking`
                frame = sources_frame(run.next_id, run.sources)
                run.next_id += 1
                parts.events.append(run.info.id, run.tail, [frame])
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
    close(answer)


def close(answer: Answer) -> None:
    """Write the answer's end: history, limits and cache, then error, usage, done."""
    parts, run = answer.parts, answer.run
    answer.settle_usage()
    cancel_seconds = None
    if answer.finish == "cancelled" and run.cancel_reason == "cancelled":
        cancel_seconds = time.monotonic() - run.cancel_at
    end = TurnEnd(
        run.info,
        answer.finish,
        str(answer.error["code"]) if answer.error else None,
        answer.input_tokens,
        answer.output_tokens,
        answer.chars,
        answer.first_token,
        answer.max_gap if len(answer.pieces) > 1 else None,
        cancel_seconds,
        cached_input_tokens=answer.cached_input_tokens,
        model=answer.model,
        failed_usage=tuple(answer.failed_usage),
    )
    text = "".join(answer.pieces)
    if run.cache_key and answer.finish == "stop" and text:
        _cache(parts, run.cache_key, text, answer.input_tokens, answer.output_tokens)
    # Numbered under the lock: a `thinking` status being written by the
    # supervisor lands before them.
    with run.lock:
        close_turn(parts, end, run.tail, text, answer.final_frames(), run.sources or [])


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


def replay(
    parts: Parts,
    info: TurnInfo,
    cached: str,
    model: str = "",
    sources: list[dict[str, Any]] | None = None,
) -> None:
    """Serve a cached answer as a complete turn, without a provider call."""
    s = parts.settings
    answer = json.loads(cached)
    start = start_frame(info, s, cached=True, model=model)
    tail = parts.events.create(info, start, s.stream_ttl + 5)
    text = answer["text"]
    final = [] if sources is None else [sources_frame(2, sources)]
    n = len(final) + 2
    final += [sse.delta(n, text), sse.frame(n + 1, "done", {"finish_reason": "stop"})]
    # Nothing was spent upstream: no usage event, and zero to settle.
    end = TurnEnd(info, "stop", None, 0, 0, len(text), None, cached=True)
    close_turn(parts, end, tail, text, final, sources or [])


def sources_frame(event_id: int, sources: list[dict[str, Any]]) -> bytes:
    """Encode what the answer may cite (site knowledge), before its first delta."""
    return sse.frame(event_id, "sources", {"sources": sources})


def start_frame(
    info: TurnInfo,
    settings: Settings,
    *,
    cached: bool,
    request: ChatRequest | None = None,
    model: str = "",
) -> bytes:
    """Encode a turn's first event, naming the model asked first."""
    fallback = request is not None and request.route == "fallback"
    data = {
        "id": info.id,
        "conversation_id": info.conversation_id,
        "provider": settings.fallback_provider if fallback else settings.provider,
        "model": request.model if request is not None else model or settings.model,
        "cached": cached,
    }
    return sse.frame(1, "start", data)


def close_turn(
    parts: Parts,
    end: TurnEnd,
    tail: Tail,
    text: str,
    final: list[bytes],
    sources: list[dict[str, Any]],
) -> None:
    """Record the answer (with the sources it could cite) and the end, then `done`.

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
                StoredMessage("assistant", text, time.time(), info.id, tuple(sources)),
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
