"""The turn machinery in-process: producer, readers, supervisor, drain.

No gunicorn here: a Relay over the in-memory log, driven in greenlets. The
providers are the built-in demo and small providers of the tests' own that
speak the Provider protocol (the HTTP edge is tested end to end elsewhere).
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from collections.abc import Iterator

import gevent
import gevent.event
import pytest

from chatapp import sse
from chatapp.config import load_config
from chatapp.errors import ProviderError
from chatapp.store.conversations import MemoryHistory
from chatapp.store.conversations import StoredMessage
from chatapp.store.coordination import MemoryCoordination
from chatapp.store.events import MemoryEventLog
from chatapp.store.tail import Sleeper
from chatapp.store.tail import Tail
from chatapp.turns import read
from chatapp.turns.model import TurnEnd
from chatapp.turns.model import TurnInfo
from chatapp.turns.relay import Relay
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Chunk
from chatapp.upstream.base import Message
from chatapp.upstream.demo import DemoProvider

REQUEST = ChatRequest("m", "", (Message("user", "hello"),), 100)


class Scripted:
    """A provider that yields given pieces, then stalls or ends as told."""

    name = "scripted"

    def __init__(self, pieces: list[str], *, stall: bool = False) -> None:
        self.pieces = pieces
        self.stall = stall
        self.closed = gevent.event.Event()

    def stream(self, request: ChatRequest) -> Generator[Chunk]:
        try:
            for piece in self.pieces:
                gevent.sleep(0)
                yield Chunk(text=piece)
            if self.stall:
                gevent.sleep(3600)
            yield Chunk(input_tokens=3, output_tokens=len(self.pieces))
            yield Chunk(finish_reason="stop")
        finally:
            self.closed.set()


class Failing:
    """A provider that fails after one piece, as the HTTP edge reports it."""

    name = "failing"

    def stream(self, request: ChatRequest) -> Generator[Chunk]:
        yield Chunk(text="half")
        raise ProviderError("provider_unavailable", "gone", retryable=True)


def relay_with(provider: object, **settings: object) -> tuple[Relay, list[TurnEnd]]:
    """A relay on memory stores; `settings` override by attribute name."""
    values: dict[str, object] = {
        "MODEL": "m",
        "STREAM_TTL": 60.0,
        "UPSTREAM_TOTAL_TIMEOUT": 30.0,
        "UPSTREAM_IDLE_TIMEOUT": 30.0,
        "HEARTBEAT_SECONDS": 15.0,
        "ORPHAN_SECONDS": 30.0,
        **{name.upper(): value for name, value in settings.items()},
    }
    log = MemoryEventLog()
    relay = Relay(
        log,
        MemoryCoordination(log),
        MemoryHistory(60),
        provider,  # type: ignore[arg-type]
        load_config(environ={}, overrides=values),
    )
    ends: list[TurnEnd] = []
    relay.on_end.append(ends.append)
    return relay, ends


def started(relay: Relay, turn_id: str = "turn-0001") -> TurnInfo:
    info = TurnInfo(turn_id, "v:owner", "conv-0001", time.time())
    relay.history.create(
        info.conversation_id, info.owner, StoredMessage("user", "hello", 0)
    )
    relay.start(info, REQUEST)
    return info


def events_of(chunks: Iterator[bytes]) -> list[tuple[str, dict[str, object]]]:
    body = b"".join(chunks)
    out = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"id: "):
            _, event, data = sse.parse(block + b"\n\n")
            out.append((event, json.loads(data)))
    return out


def follow(relay: Relay, turn_id: str, after: int = 0) -> list[tuple[str, dict]]:
    tail = relay.open(turn_id)
    assert tail is not None
    try:
        stream = read.stream(
            tail, after, heartbeat=15, wake=0.05, client_gone=lambda: False
        )
        return events_of(stream)
    finally:
        relay.close(turn_id, tail)


def test_a_turn_streams_its_text_then_usage_then_one_done() -> None:
    relay, ends = relay_with(Scripted(["Hel", "lo", " there"]))
    info = started(relay)
    got = follow(relay, info.id)
    assert [e for e, _ in got] == ["start", "delta", "delta", "delta", "usage", "done"]
    assert "".join(d["text"] for e, d in got if e == "delta") == "Hello there"
    assert got[-1][1] == {"finish_reason": "stop"}
    assert [e.finish_reason for e in ends] == ["stop"]
    assert relay.history.messages("conv-0001")[-1].content == "Hello there"


def test_the_first_write_carries_the_retry_line_and_the_frames_waiting() -> None:
    relay, _ = relay_with(Scripted(["a", "b"]))
    info = started(relay)
    everything = follow(relay, info.id)
    tail = relay.open(info.id)
    assert tail is not None
    try:
        fresh = read.stream(tail, 0, heartbeat=15, wake=0.05, client_gone=lambda: False)
        first = next(fresh)
        assert first == sse.retry(read.RETRY_MS) + b"".join(tail.frames)
        assert events_of(iter([first])) == everything
        assert list(fresh) == []
        # A reader already at the end gets the retry line alone, at once.
        caught_up = read.stream(
            tail, len(tail.frames), heartbeat=15, wake=0.05, client_gone=lambda: False
        )
        assert list(caught_up) == [sse.retry(read.RETRY_MS)]
    finally:
        relay.close(info.id, tail)


def test_a_resumed_reader_gets_only_what_comes_after_its_id() -> None:
    relay, _ = relay_with(Scripted(["a", "b", "c"]))
    info = started(relay)
    everything = follow(relay, info.id)
    assert follow(relay, info.id, after=2) == everything[2:]
    tail = relay.open(info.id)
    assert tail is not None and read.finished(tail, len(everything))


def test_the_demo_answer_concatenates_to_its_text() -> None:
    relay, _ = relay_with(DemoProvider(delay=0))
    info = started(relay)
    text = "".join(d["text"] for e, d in follow(relay, info.id) if e == "delta")
    assert text.startswith("Hello! I am the **chatapp demo provider**")
    assert relay.history.messages("conv-0001")[-1].content == text


def test_a_provider_error_ends_with_error_then_done() -> None:
    relay, ends = relay_with(Failing())
    info = started(relay)
    got = follow(relay, info.id)
    assert [e for e, _ in got] == ["start", "delta", "error", "done"]
    assert got[2][1]["code"] == "provider_unavailable"
    assert got[-1][1] == {"finish_reason": "error"}
    assert ends[0].error_code == "provider_unavailable"


def test_cancel_closes_the_upstream_and_ends_the_turn() -> None:
    provider = Scripted(["a"], stall=True)
    relay, ends = relay_with(provider)
    info = started(relay)
    gevent.spawn_later(0.05, relay.cancel, info.id)
    got = follow(relay, info.id)
    assert got[-1] == ("done", {"finish_reason": "cancelled"})
    assert provider.closed.is_set()
    assert ends[0].cancel_seconds is not None and ends[0].cancel_seconds < 1


def test_the_watchdog_ends_a_silent_provider() -> None:
    provider = Scripted(["a"], stall=True)
    relay, _ = relay_with(provider, upstream_idle_timeout=0.2)
    info = started(relay)
    got = follow(relay, info.id)
    assert got[-2][1]["code"] == "provider_timeout"
    assert got[-1] == ("done", {"finish_reason": "error"})
    assert provider.closed.is_set()


def test_a_turn_nobody_reads_is_cancelled_as_an_orphan() -> None:
    provider = Scripted([], stall=True)
    relay, ends = relay_with(provider, orphan_seconds=0.2)
    started(relay)
    assert provider.closed.wait(5)
    gevent.sleep(0.05)
    assert [e.finish_reason for e in ends] == ["cancelled"]
    assert ends[0].cancel_seconds is None  # not a client's cancel


def test_lone_surrogates_from_the_provider_become_replacement_characters() -> None:
    relay, _ = relay_with(Scripted(["x\ud800y"]))
    info = started(relay)
    got = follow(relay, info.id)
    assert got[1] == ("delta", {"text": "x\ufffdy"})
    assert relay.history.messages("conv-0001")[-1].content == "x\ufffdy"


def test_drain_lets_short_turns_finish_and_ends_the_rest() -> None:
    stalled = Scripted(["a"], stall=True)
    relay, ends = relay_with(stalled)
    info = started(relay)
    drainer = gevent.spawn(relay.drain, 0.2)
    got = follow(relay, info.id)
    drainer.join(5)
    assert relay.draining and relay.running == 0
    assert got[-2][1]["code"] == "internal"
    assert got[-1] == ("done", {"finish_reason": "error"})
    assert stalled.closed.is_set()


@pytest.mark.parametrize(
    ("frame", "parsed"),
    [
        (sse.delta(7, 'say "hi"\nnow'), (7, "delta", '{"text":"say \\"hi\\"\\nnow"}')),
        (
            sse.frame(9, "done", {"finish_reason": "stop"}),
            (9, "done", '{"finish_reason":"stop"}'),
        ),
    ],
)
def test_frames_read_back_as_written(
    frame: bytes, parsed: tuple[int, str, str]
) -> None:
    assert frame.count(b"\n\n") == 1 and frame.endswith(b"\n\n")
    assert sse.parse(frame) == parsed


def test_a_runaway_answer_is_cut_at_the_limit_and_closed() -> None:
    from chatapp.turns.produce import answer_char_limit

    limit = answer_char_limit(REQUEST.max_output_tokens)
    provider = Scripted(["x" * (limit - 3), "abcdef", "more"])
    relay, ends = relay_with(provider)
    info = started(relay)
    got = follow(relay, info.id)
    text = "".join(d["text"] for e, d in got if e == "delta")
    assert text == "x" * (limit - 3) + "abc"
    assert got[-1] == ("done", {"finish_reason": "length"})
    assert provider.closed.is_set()
    assert ends[0].output_chars == limit


def test_a_reader_past_the_end_of_a_finished_turn_is_finished() -> None:
    relay, _ = relay_with(Scripted(["a"]))
    info = started(relay)
    everything = follow(relay, info.id)
    tail = relay.open(info.id)
    assert tail is not None
    # SPEC: a reconnect after done gets 204, also with an id beyond the end.
    assert read.finished(tail, len(everything))
    assert read.finished(tail, len(everything) + 10)
    assert not read.finished(tail, len(everything) - 1)


class Thinker:
    """A provider that is silent, then reasons, then answers."""

    name = "thinker"

    def __init__(self, silence: float) -> None:
        self.silence = silence

    def stream(self, request: ChatRequest) -> Generator[Chunk]:
        gevent.sleep(self.silence)
        yield Chunk(reasoning="Let me see. ")
        yield Chunk(reasoning="Two and two.")
        yield Chunk(text="Four.")
        yield Chunk(input_tokens=3, output_tokens=9, finish_reason="stop")


@pytest.mark.parametrize("silence", [0.0, 1.6])
def test_thinking_is_said_once_before_the_answer_and_never_in_it(
    silence: float,
) -> None:
    relay, _ = relay_with(Thinker(silence), show_reasoning=True)
    info = started(relay)
    got = follow(relay, info.id)
    # Whether the silence or the reasoning says it first: one status.
    assert [e for e, _ in got] == [
        "start",
        "status",
        "reasoning",
        "reasoning",
        "delta",
        "usage",
        "done",
    ]
    assert got[1][1] == {"state": "thinking"}
    assert "".join(d["text"] for e, d in got if e == "reasoning") == (
        "Let me see. Two and two."
    )
    assert relay.history.messages("conv-0001")[-1].content == "Four."


def test_reasoning_is_not_relayed_unless_asked_for() -> None:
    relay, _ = relay_with(Thinker(0.0))
    info = started(relay)
    got = follow(relay, info.id)
    assert [e for e, _ in got] == ["start", "status", "delta", "usage", "done"]


def test_the_first_token_wait_ends_a_silent_provider() -> None:
    relay, ends = relay_with(
        Scripted([], stall=True),
        upstream_first_token_timeout=0.3,
        upstream_idle_timeout=10.0,
    )
    info = started(relay)
    got = follow(relay, info.id)
    assert [e for e, _ in got] == ["start", "error", "done"]
    assert got[1][1]["code"] == "provider_timeout"
    assert ends[0].error_code == "provider_timeout"


def test_usage_a_failed_attempt_reported_is_charged_with_the_answer() -> None:
    from chatapp.upstream.retry import Resilient
    from chatapp.upstream.retry import Route

    class Flaky:
        name = "flaky"

        def __init__(self) -> None:
            self.calls = 0

        def stream(self, request: ChatRequest) -> Generator[Chunk]:
            self.calls += 1
            if self.calls == 1:
                yield Chunk(input_tokens=7)
                raise ProviderError(
                    "provider_unavailable", "overloaded", retryable=True, reason="529"
                )
            yield Chunk(text="Fine.")
            yield Chunk(input_tokens=7, output_tokens=2, finish_reason="stop")

    upstream = Resilient(Route(Flaky(), "m"), retries=1, sleep=lambda s: None)
    relay, ends = relay_with(upstream)
    info = started(relay)
    got = follow(relay, info.id)
    assert [e for e, _ in got] == ["start", "status", "delta", "usage", "done"]
    assert got[1][1] == {
        "state": "retrying",
        "attempt": 2,
        "provider": "flaky",
        "model": "m",
    }
    assert got[3][1] == {"input_tokens": 14, "output_tokens": 2}
    assert (ends[0].input_tokens, ends[0].output_tokens) == (14, 2)


@pytest.mark.parametrize("reused", [True, False])
def test_a_wait_after_a_timed_out_one_blocks_until_the_tail_changes(
    reused: bool,
) -> None:
    # libev leaves a one-shot timer that fired with a stale expiry: restarted
    # as it was, every later wait of a reader ended at once, and a silent
    # turn's reader spun instead of sleeping.
    tail = Tail()
    sleeper = Sleeper(0.3)

    def wait() -> None:
        if reused:
            sleeper.wait(tail)
        else:
            tail.wait(0.3)

    wait()  # nothing comes: it times out
    waiting = gevent.spawn(wait)
    gevent.idle()
    gevent.idle()
    assert not waiting.dead  # still parked: its timer did not fire at once
    tail.extend([b"x"])
    waiting.join(5)
    assert waiting.dead
    sleeper.close()
