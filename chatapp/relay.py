"""Producer greenlets (provider -> turn log) and readers (turn log -> SSE).

A turn's producer is not tied to any reader: it starts at the POST, writes
every event to the turn log and ends with exactly one `done`. Readers replay
the log from any id and follow it live, so a dropped connection resumes
without a second provider call. A per-worker supervisor cancels orphans and
renews the leases that tell other hosts this worker is still producing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gevent

from chatapp import sse
from chatapp.errors import ProviderError
from chatapp.errors import StoreError
from chatapp.history import History
from chatapp.history import StoredMessage
from chatapp.providers.base import ChatRequest
from chatapp.providers.base import Provider
from chatapp.streams import Event
from chatapp.streams import TurnInfo
from chatapp.streams import TurnLog

log = logging.getLogger(__name__)

RETRY_MS = 2000
LEASE_SECONDS = 4.0
SUPERVISE_EVERY = 1.0


class TurnCancelled(Exception):
    """Raised inside a producer greenlet to stop its turn."""


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """The timing and size bounds a relay works with."""

    provider: str
    model: str
    stream_ttl: float
    total_timeout: float
    heartbeat: float
    orphan: float
    cache_ttl: float = 0


@dataclass
class TurnOutcome:
    """How a turn ended; handed to the `on_finish` hooks (limits, metrics)."""

    info: TurnInfo
    finish_reason: str
    error_code: str | None
    input_tokens: int | None
    output_tokens: int | None
    output_chars: int
    first_token_seconds: float | None
    cached: bool = False


# One encoder for every event: json.dumps with options builds a new one per call.
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Relay:
    """Run turns in this worker and serve their events to readers anywhere."""

    def __init__(
        self,
        turns: TurnLog,
        history: History,
        provider: Provider,
        settings: RelaySettings,
    ) -> None:
        self.turns = turns
        self.history = history
        self.provider = provider
        self.settings = settings
        self._producers: dict[str, _Run] = {}
        self._supervisor: gevent.Greenlet | None = None
        self.on_finish: list[Callable[[TurnOutcome], None]] = []
        turns.on_cancel(self._cancel_local)

    @property
    def running(self) -> int:
        """How many turns this worker is producing now."""
        return len(self._producers)

    # -- producing --------------------------------------------------------

    def start(
        self, info: TurnInfo, request: ChatRequest, cache_key: str | None = None
    ) -> None:
        """Log the turn and start generating its answer at once."""
        s = self.settings
        self.turns.create(info, s.total_timeout + s.stream_ttl + LEASE_SECONDS)
        self.turns.pulse([info.id], LEASE_SECONDS)
        self.turns.touch_reader(info.id, s.orphan)
        run = _Run(cache_key)
        self._producers[info.id] = run
        run.greenlet = gevent.spawn(self._produce, info, request, run)
        if self._supervisor is None or self._supervisor.dead:
            self._supervisor = gevent.spawn(self._supervise)

    def cancel(self, turn_id: str) -> None:
        """Cancel a turn wherever it runs; a finished turn is left alone."""
        if self.turns.done_id(turn_id) is None:
            self.turns.request_cancel(turn_id)

    def _cancel_local(self, turn_id: str, reason: str = "cancelled") -> None:
        run = self._producers.get(turn_id)
        if run is None or run.cancel_reason:
            return
        run.cancel_reason = reason
        # Interrupt only a wait on the provider; a write to the turn log is
        # left to finish, and the producer checks the flag right after it.
        if run.in_upstream and run.greenlet is not None:
            gevent.get_hub().loop.run_callback(_interrupt, run, reason)

    def _produce(self, info: TurnInfo, request: ChatRequest, run: _Run) -> None:
        s = self.settings
        writer = _Writer(self.turns, info.id)
        pieces: list[str] = []
        finish, error_code = "stop", None
        input_tokens: int | None = None
        output_tokens: int | None = None
        first_token: float | None = None
        started = time.monotonic()
        try:
            writer.add(
                "start",
                {
                    "id": info.id,
                    "conversation_id": info.conversation_id,
                    "provider": s.provider,
                    "model": s.model,
                    "cached": False,
                },
            )
            writer.flush()
            if self.turns.cancel_requested(info.id):
                run.cancel_reason = "cancelled"
            run.raise_if_cancelled()
            timeout = gevent.Timeout(
                s.total_timeout,
                ProviderError(
                    "provider_timeout",
                    "The answer took longer than the server allows.",
                    retryable=True,
                ),
            )
            timeout.start()
            stream = self.provider.stream(request)
            try:
                run.in_upstream = True
                for chunks in stream:
                    run.in_upstream = False
                    text = "".join(c.text for c in chunks if c.text)
                    if text:
                        if first_token is None:
                            first_token = time.monotonic() - started
                        pieces.append(text)
                        writer.add("delta", {"text": text})
                    for chunk in chunks:
                        if chunk.input_tokens is not None:
                            input_tokens = chunk.input_tokens
                        if chunk.output_tokens is not None:
                            output_tokens = chunk.output_tokens
                        if chunk.finish_reason:
                            finish = chunk.finish_reason
                    writer.flush()
                    run.raise_if_cancelled()
                    run.in_upstream = True
            finally:
                run.in_upstream = False
                # Closing the iterator closes the upstream response at once,
                # whatever stopped us: cancel, timeout or error.
                stream.close()
                timeout.close()
        except TurnCancelled as exc:
            finish = "cancelled"
            log.info("turn %s %s", info.id, exc)
        except ProviderError as exc:
            finish, error_code = "error", exc.code
            writer.add(
                "error",
                {"code": exc.code, "message": exc.message, "retryable": exc.retryable},
            )
        except StoreError:
            log.exception("turn %s: the turn log failed", info.id)
            finish, error_code = "error", "internal"
        except Exception:
            log.exception("turn %s failed", info.id)
            finish, error_code = "error", "internal"
            writer.add(
                "error",
                {
                    "code": "internal",
                    "message": "Something went wrong on our side.",
                    "retryable": True,
                },
            )
        finally:
            self._producers.pop(info.id, None)
        outcome = TurnOutcome(
            info,
            finish,
            error_code,
            input_tokens,
            output_tokens,
            sum(map(len, pieces)),
            first_token,
        )
        text = "".join(pieces)
        if run.cache_key and finish == "stop" and text:
            cached = {"text": text, "input": input_tokens, "output": output_tokens}
            try:
                self.history.cache_answer(run.cache_key, _json(cached), s.cache_ttl)
            except StoreError:
                log.warning("turn %s: could not cache its answer", info.id)
        self._finish(writer, outcome, text)

    def replay(self, info: TurnInfo, cached: str) -> None:
        """Serve a cached answer as a complete turn, without a provider call."""
        s = self.settings
        answer = json.loads(cached)
        self.turns.create(info, s.stream_ttl + LEASE_SECONDS)
        writer = _Writer(self.turns, info.id)
        writer.add(
            "start",
            {
                "id": info.id,
                "conversation_id": info.conversation_id,
                "provider": s.provider,
                "model": s.model,
                "cached": True,
            },
        )
        writer.add("delta", {"text": answer["text"]})
        writer.flush()
        # Nothing was spent upstream: no usage event, and zero to settle.
        outcome = TurnOutcome(info, "stop", None, 0, 0, len(answer["text"]), None, True)
        self._finish(writer, outcome, answer["text"], usage=False)

    def _finish(
        self, writer: _Writer, outcome: TurnOutcome, text: str, *, usage: bool = True
    ) -> None:
        info = outcome.info
        try:
            reported = (
                outcome.input_tokens is not None or outcome.output_tokens is not None
            )
            if usage and reported:
                writer.add(
                    "usage",
                    {
                        "input_tokens": outcome.input_tokens,
                        "output_tokens": outcome.output_tokens,
                    },
                )
            done_id = writer.add("done", {"finish_reason": outcome.finish_reason})
            # Record the answer and the end before `done` goes out, so a
            # client that saw `done` finds both: history and a 204 on reconnect.
            if text:
                self.history.append(
                    info.conversation_id,
                    StoredMessage("assistant", text, time.time()),
                )
            self.turns.finish(info.id, done_id, self.settings.stream_ttl)
        except StoreError:
            log.exception("turn %s: could not record its end", info.id)
        # Limits settle before `done` too: a visitor who sends the next
        # message the moment this one ends must find its stream slot free.
        for hook in self.on_finish:
            try:
                hook(outcome)
            except Exception:
                log.exception("turn %s: finish hook failed", info.id)
        try:
            writer.flush()
        except StoreError:
            log.exception("turn %s: could not write its end", info.id)

    # -- supervising ------------------------------------------------------

    def _supervise(self) -> None:
        """Renew leases and cancel orphans while this worker produces turns."""
        orphan = self.settings.orphan
        while self._producers:
            gevent.sleep(SUPERVISE_EVERY)
            ids = list(self._producers)
            if not ids:
                break
            try:
                pulses = self.turns.pulse(ids, LEASE_SECONDS)
            except StoreError:
                log.warning("supervisor: the turn log did not answer")
                continue
            for turn_id, pulse in zip(ids, pulses, strict=True):
                if pulse.cancel:
                    self._cancel_local(turn_id, "cancelled")
                elif not pulse.readers:
                    log.info("turn %s: no reader for %.0fs", turn_id, orphan)
                    self._cancel_local(turn_id, "orphaned")

    # -- reading ----------------------------------------------------------

    def events(
        self,
        turn_id: str,
        after: int,
        client_gone: Callable[[], bool] = lambda: False,
    ) -> Iterator[bytes]:
        """Yield the turn's SSE bytes after event `after`, live until `done`."""
        s = self.settings
        wake = max(0.05, min(s.heartbeat, s.orphan / 3, LEASE_SECONDS / 2))
        yield sse.retry(RETRY_MS)
        last_write = time.monotonic()
        try:
            self.turns.touch_reader(turn_id, s.orphan)
            last_touch = time.monotonic()
            while True:
                try:
                    events = self.turns.read(turn_id, after, wake)
                except StoreError:
                    yield _lost_store_events(after)
                    return
                if events is None:
                    return
                if events:
                    yield b"".join(sse.encode(e.event, e.data, e.id) for e in events)
                    after = events[-1].id
                    if events[-1].event == "done":
                        return
                    last_write = time.monotonic()
                elif not self._producer_alive(turn_id):
                    continue  # the reaper wrote error + done; read them next
                elif client_gone():
                    return
                now = time.monotonic()
                if now - last_write >= s.heartbeat:
                    yield sse.KEEP_ALIVE
                    last_write = now
                if now - last_touch >= wake:
                    self.turns.touch_reader(turn_id, s.orphan)
                    last_touch = now
        except StoreError:
            log.warning("reader of %s: the turn log did not answer", turn_id)

    def poll(self, turn_id: str, after: int, wait: float) -> tuple[list[Event], bool]:
        """Return events after `after`, waiting up to `wait` when none are ready."""
        self.turns.touch_reader(turn_id, self.settings.orphan)
        events = self.turns.read(turn_id, after, wait) or []
        done = bool(events and events[-1].event == "done")
        if not events:
            done_id = self.turns.done_id(turn_id)
            done = done_id is not None and after >= done_id
        return events, done

    def _producer_alive(self, turn_id: str) -> bool:
        """Reap a turn whose producer died, so its readers get error + done."""
        if turn_id in self._producers or self.turns.producer_alive(turn_id):
            return True
        if self.turns.done_id(turn_id) is not None:
            return True
        last = self.turns.claim_reap(turn_id)
        if last is None:
            return True
        writer = _Writer(self.turns, turn_id, next_id=last + 1)
        writer.add(
            "error",
            {
                "code": "internal",
                "message": "The server running this answer stopped.",
                "retryable": True,
            },
        )
        done_id = writer.add("done", {"finish_reason": "error"})
        self.turns.finish(turn_id, done_id, self.settings.stream_ttl)
        writer.flush()
        return False


def _lost_store_events(after: int) -> bytes:
    error = _json(
        {
            "code": "internal",
            "message": "Lost the connection to shared storage.",
            "retryable": True,
        }
    )
    return sse.encode("error", error, after + 1) + sse.encode(
        "done", _json({"finish_reason": "error"}), after + 2
    )


def _interrupt(run: _Run, reason: str) -> None:
    """Raise TurnCancelled in a producer still waiting on its provider.

    Runs in the hub. Checked here, when delivered, and not when asked: by
    then the producer may be writing its end to the turn log, which an
    exception must not cut short.
    """
    greenlet = run.greenlet
    if run.in_upstream and greenlet is not None and not greenlet.dead:
        greenlet.throw(TurnCancelled(reason))


class _Run:
    """A producer greenlet and whether, and where, it may be interrupted."""

    def __init__(self, cache_key: str | None = None) -> None:
        self.cache_key = cache_key
        self.greenlet: gevent.Greenlet | None = None
        self.cancel_reason = ""
        self.in_upstream = False

    def raise_if_cancelled(self) -> None:
        if self.cancel_reason:
            raise TurnCancelled(self.cancel_reason)


class _Writer:
    """Number events 1..n and write them to the log in batches."""

    def __init__(self, turns: TurnLog, turn_id: str, next_id: int = 1) -> None:
        self._turns = turns
        self._turn_id = turn_id
        self._next = next_id
        self._pending: list[Event] = []

    def add(self, event: str, data: dict[str, Any]) -> int:
        event_id = self._next
        self._next += 1
        self._pending.append(Event(event_id, event, _json(data)))
        return event_id

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._turns.append(self._turn_id, pending)
