"""The load client: what browsers do, thousands at once, from one gevent process.

A virtual user (VU) does what the chat page does: with a page token from
``GET /`` it POSTs ``/api/chat``, opens the returned ``stream_url`` as an
event stream and reads until ``done``; then it asks the next question. The
``floor`` scenario makes the same upstream call as the service, straight to
the fake upstream, with the same clock and the same parsing.

Scenarios (``--config`` JSON, see `Config`):

- ``load`` / ``floor``: VUs in a closed loop; figures are taken in a window.
- ``relay``: the floor's client pointed at ``port``: the plain relay
  (`bench.plain_relay`), which forwards the upstream's own format.
- ``hold``: open every VU's stream and keep it open; print ``held``; on a
  ``release`` line on stdin cancel them all and time the upstream closes.
- ``relay_hold``: the same through the plain relay, which has no cancel: on
  ``release`` the client closes its connections.
- ``cancel``: cancel or abandon turns against a silent and a streaming
  upstream and time the upstream closes.

Progress goes to stderr; stdout carries JSON lines, the last one the result.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import gevent
import gevent.event
import gevent.os
import gevent.queue

from bench.httpc import Connection
from bench.httpc import HTTPError
from bench.httpc import Response
from bench.httpc import SSEReader
from bench.procs import raise_nofile_limit
from bench.protocol import TOKEN_CHARS
from bench.protocol import Pace
from bench.protocol import answer_text
from bench.protocol import marker
from bench.stats import GAP_BUCKET

HOST = "127.0.0.1"
TOKEN_MARK = 'name="chatapp-token" content="'
SYSTEM_PROMPT = "You are a helpful, concise assistant on a website. Answer in Markdown."
AFTER_DONE_SECONDS = 5.0
CANCEL_KINDS = (
    "cancel_silent",
    "cancel_streaming",
    "vanish_silent",
    "vanish_streaming",
)
STREAMING_DELTAS_BEFORE_ACT = 10
# Optional: the pid of the worker that answered, so that a reader can tell
# whether the turn it follows was started (and is produced) in another one.
WORKER_HEADER = "x-chatapp-worker"


@dataclass(frozen=True)
class Config:
    """One client process's part of a phase; times are time.monotonic()."""

    scenario: str
    port: int
    upstream_port: int
    vus: int
    name: str
    t0: float
    deadline: float
    ramp: float = 1.0
    settle: float = 1.0
    window: float = 10.0
    drain: float = 10.0
    pace: Pace = field(default_factory=lambda: Pace(200, 20, 50))
    long_tokens: int = 500
    hold_gap_ms: int = 5000
    cancel_count: int = 50
    page_tokens: int = 8
    orphan_seconds: float = 2.0
    # "same": the stream follows the POST on one keep-alive connection, so it
    # is read in the worker that started the turn (as before this option).
    # "own": a VU reads its streams on a connection of their own, as a page's
    # EventSource does beside its fetch() calls; with several workers a
    # stream is then often read in another worker than its POST's.
    stream_conn: str = "same"
    # "two": POST /api/chat for JSON, then GET its stream_url (EventSource).
    # "one": POST with Accept: text/event-stream and read the turn's stream
    # from the POST's own response (SPEC: one request per turn).
    requests_per_turn: str = "two"
    # "single": every VU is 127.0.0.1, one client to the service's limits (the
    # worst case). "distinct": each VU sends its own X-Forwarded-For address
    # (the service runs with CHATAPP_TRUSTED_PROXY_HOPS=1), so the limiter
    # keeps a window per visitor, as behind a reverse proxy.
    addresses: str = "single"

    @property
    def window_start(self) -> float:
        return self.t0 + self.ramp + self.settle

    @property
    def window_end(self) -> float:
        return self.window_start + self.window

    @classmethod
    def from_json(cls, text: str) -> Config:
        raw = json.loads(text)
        raw["pace"] = Pace(**raw["pace"])
        return cls(**raw)


def emit(event: str, **fields: Any) -> None:
    """Write one JSON line for the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    print(f"loadgen: {message}", file=sys.stderr, flush=True)


def _error_code(response: Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


class Recorder:
    """What a phase measured; a sample counts when it falls in the window."""

    def __init__(self, window_start: float, window_end: float) -> None:
        self.ws = window_start
        self.we = window_end
        self.ttft: list[float] = []
        self.post: list[float] = []
        self.gaps: Counter[int] = Counter()
        # The same gaps split by where the reader sat, when the service names
        # its workers (WORKER_HEADER); keys "same" and "other".
        self.gaps_by_worker: dict[str, Counter[int]] = {
            "same": Counter(),
            "other": Counter(),
        }
        self.turns_by_worker: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.started = 0
        self.completed = 0
        self.completed_in_window = 0
        self.tokens_in_window = 0
        self.cut = 0

    def in_window(self, t: float) -> bool:
        return self.ws <= t < self.we

    def result(self) -> dict[str, Any]:
        return {
            "ttft": self.ttft,
            "post": self.post,
            "gaps": {str(k): v for k, v in self.gaps.items()},
            "gaps_by_worker": {
                where: {str(k): v for k, v in gaps.items()}
                for where, gaps in self.gaps_by_worker.items()
            },
            "turns_by_worker": dict(self.turns_by_worker),
            "errors": dict(self.errors),
            "started": self.started,
            "completed": self.completed,
            "completed_in_window": self.completed_in_window,
            "tokens_in_window": self.tokens_in_window,
            "cut": self.cut,
        }


class Stream:
    """One answer as read by a client: text, timings, how it ended."""

    def __init__(
        self, recorder: Recorder, sent_at: float, chunks: Iterator[bytes]
    ) -> None:
        self.rec = recorder
        self.sent_at = sent_at
        self.chunks = chunks
        self.reader = SSEReader()
        self.first: float | None = None
        self.last = 0.0
        self.parts: list[str] = []
        self.deltas = 0
        self.finish: str | None = None
        self.started = False
        self.split: Counter[int] | None = None  # also count gaps here

    def token_text(self, now: float, text: str) -> None:
        """Take the text of a delta read at `now` (one `now` per socket read).

        A gap is the wait between two reads that brought text: deltas that
        arrive together in one read are one burst after one wait, not a
        wait followed by waits of zero.
        """
        rec = self.rec
        if self.first is None:
            self.first = now
            if rec.in_window(self.sent_at):
                rec.ttft.append(now - self.sent_at)
        elif now != self.last and rec.in_window(now):
            bucket = int((now - self.last) / GAP_BUCKET)
            rec.gaps[bucket] += 1
            if self.split is not None:
                self.split[bucket] += 1
        if rec.in_window(now):
            rec.tokens_in_window += len(text) // TOKEN_CHARS
        self.last = now
        self.deltas += 1
        self.parts.append(text)

    def check(self, pace: Pace) -> None:
        """Count a turn that did not end as the upstream answered it."""
        rec = self.rec
        if self.finish is None:
            rec.errors["no_done"] += 1
        elif self.finish != "stop":
            rec.errors[f"finish_{self.finish}"] += 1
        elif "".join(self.parts) != answer_text(pace.tokens):
            rec.errors["bad_text"] += 1
        else:
            rec.completed += 1
            if rec.in_window(self.last):
                rec.completed_in_window += 1


class Client:
    """The VUs of one process, for one scenario."""

    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.rec = Recorder(config.window_start, config.window_end)
        self.page_tokens: list[str] = []
        self.in_turn: set[int] = set()
        self._seq = 0
        # Which of the run's client processes this is: VUs' addresses differ.
        self._proc_index = int(config.name.rsplit("c", 1)[-1] or 0)

    def address(self, vu: int) -> dict[str, str]:
        """The X-Forwarded-For header of one VU, or none in single mode."""
        if self.cfg.addresses != "distinct":
            return {}
        k = self._proc_index
        return {"X-Forwarded-For": f"10.{k % 256}.{vu // 256 % 256}.{vu % 256}"}

    def rid(self, prefix: str = "t") -> str:
        self._seq += 1
        return f"{self.cfg.name}-{prefix}{self._seq}"

    # -- the browser's requests -------------------------------------------

    def fetch_page_tokens(self) -> None:
        conn = Connection(HOST, self.cfg.port)
        try:
            for i in range(max(1, min(self.cfg.page_tokens, self.cfg.vus))):
                html = conn.request(
                    "GET", "/", {"Accept": "text/html", **self.address(i)}
                ).body.decode()
                start = html.index(TOKEN_MARK) + len(TOKEN_MARK)
                self.page_tokens.append(html[start : html.index('"', start)])
        finally:
            conn.close()

    def turn_body(self, vu: int, pace: Pace, rid: str, *, track: bool) -> bytes:
        return json.dumps(
            {
                "message": f"Tell me something. {marker(rid, pace, track=track)}",
                "token": self.page_tokens[vu % len(self.page_tokens)],
            }
        ).encode()

    def start_turn(
        self, conn: Connection, vu: int, pace: Pace, rid: str, *, track: bool = False
    ) -> dict[str, Any] | None:
        """POST /api/chat as the page does; None (error counted) when refused."""
        response = conn.request(
            "POST",
            "/api/chat",
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                **self.address(vu),
            },
            self.turn_body(vu, pace, rid, track=track),
        )
        if response.status != 201:
            self.rec.errors[f"http_{response.status}_{_error_code(response)}"] += 1
            return None
        turn: dict[str, Any] = response.json()
        turn["_worker"] = response.headers.get(WORKER_HEADER)
        return turn

    def start_streamed_turn(
        self, conn: Connection, vu: int, pace: Pace, rid: str
    ) -> Response | None:
        """POST /api/chat asking for the event stream itself; None if refused.

        A service that answers 201 JSON does not do one request per turn:
        that counts as `unsupported_one_request` (the bench prints "n/a").
        """
        conn.send(
            "POST",
            "/api/chat",
            {
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
                **self.address(vu),
            },
            self.turn_body(vu, pace, rid, track=False),
        )
        head = conn.head()
        if head.status == 201:
            conn.body(head)
            self.rec.errors["unsupported_one_request"] += 1
            return None
        if head.status != 200 or not head.chunked:
            conn.body(head)
            self.rec.errors[f"http_{head.status}_{_error_code(head)}"] += 1
            return None
        return head

    def open_stream(self, conn: Connection, url: str, vu: int = 0) -> Response | None:
        """GET the stream URL as EventSource does; None (error counted) if refused."""
        conn.send(
            "GET",
            url,
            {
                "Accept": "text/event-stream",
                "Cache-Control": "no-cache",
                **self.address(vu),
            },
            b"",
        )
        head = conn.head()
        if head.status != 200 or not head.chunked:
            self.rec.errors[f"stream_http_{head.status}"] += 1
            conn.close()
            return None
        return head

    def read_events(
        self, conn: Connection, stream: Stream, stop_after_deltas: int = 0
    ) -> bool:
        """Read the stream into `stream` until done; True if the response ended.

        With `stop_after_deltas` > 0 it returns False once that many deltas
        arrived, with -1 once `start` did; a later call reads on.
        """
        for piece in stream.chunks:
            now = time.monotonic()
            for event, data in stream.reader.feed(piece):
                if event == "delta":
                    stream.token_text(now, json.loads(data)["text"])
                elif event == "start":
                    stream.started = True
                elif event == "done":
                    stream.finish = json.loads(data)["finish_reason"]
                elif event == "error":
                    self.rec.errors[f"sse_{json.loads(data)['code']}"] += 1
            if stream.finish is not None:
                break
            if stop_after_deltas > 0 and stream.deltas >= stop_after_deltas:
                return False
            if stop_after_deltas < 0 and stream.started:
                return False
        else:
            return True
        # `done` is last: the response ends right after it.
        try:
            with gevent.Timeout(AFTER_DONE_SECONDS):
                for _ in stream.chunks:
                    pass
        except gevent.Timeout:
            self.rec.errors["open_after_done"] += 1
            conn.close()
        return True

    # -- load and floor ---------------------------------------------------

    def service_turn(self, conn: Connection, events: Connection, vu: int) -> None:
        """POST on `conn`, read the stream on `events` (maybe the same one)."""
        pace = self.cfg.pace
        sent = time.monotonic()
        if self.cfg.requests_per_turn == "one":
            streamed = self.start_streamed_turn(conn, vu, pace, self.rid())
            if streamed is None:
                gevent.sleep(0.2)
                return
            if self.rec.in_window(sent):
                self.rec.post.append(time.monotonic() - sent)
            stream = Stream(self.rec, sent, conn.chunks(streamed))
            self.read_events(conn, stream)
            stream.check(pace)
            return
        turn = self.start_turn(conn, vu, pace, self.rid())
        if turn is None:
            gevent.sleep(0.2)  # a refused browser does not retry at once
            return
        if self.rec.in_window(sent):
            self.rec.post.append(time.monotonic() - sent)
        head = self.open_stream(events, turn["stream_url"], vu)
        if head is None:
            return
        stream = Stream(self.rec, sent, events.chunks(head))
        reader_worker = head.headers.get(WORKER_HEADER)
        if turn["_worker"] and reader_worker:
            where = "same" if turn["_worker"] == reader_worker else "other"
            stream.split = self.rec.gaps_by_worker[where]
            if self.rec.in_window(sent):
                self.rec.turns_by_worker[where] += 1
        self.read_events(events, stream)
        stream.check(pace)

    def floor_turn(self, conn: Connection, events: Connection, vu: int) -> None:
        """The service's upstream call, straight to the upstream or the relay."""
        pace = self.cfg.pace
        sent = time.monotonic()
        head = self.send_completion(conn, self.rid("f"), pace)
        if head is None:
            return
        stream = Stream(self.rec, sent, conn.chunks(head))
        self.read_completion(stream)
        stream.check(pace)

    def send_completion(
        self, conn: Connection, rid: str, pace: Pace
    ) -> Response | None:
        """POST the service's upstream request; None (error counted) if refused."""
        body = json.dumps(
            {
                "model": "bench-model",
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {
                        "role": "user",
                        "content": f"Tell me something. {marker(rid, pace)}",
                    },
                ],
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 1024,
            }
        ).encode()
        conn.send(
            "POST",
            "/v1/chat/completions",
            {
                "Authorization": "Bearer bench-key-not-secret",
                "Accept": "text/event-stream",
                "Content-Type": "application/json",
            },
            body,
        )
        head = conn.head()
        if head.status != 200 or not head.chunked:
            self.rec.errors[f"http_{head.status}"] += 1
            conn.close()
            return None
        return head

    def read_completion(self, stream: Stream, stop_after_deltas: int = 0) -> bool:
        """Read an upstream-format stream; True if it ended (see `read_events`)."""
        for piece in stream.chunks:
            now = time.monotonic()
            for _, data in stream.reader.feed(piece):
                if data == "[DONE]":
                    continue
                chunk = json.loads(data)
                choices = chunk.get("choices")
                if not choices:
                    continue
                text = choices[0]["delta"].get("content")
                if text:
                    stream.token_text(now, text)
                if choices[0].get("finish_reason"):
                    stream.finish = choices[0]["finish_reason"]
            if stop_after_deltas > 0 and stream.deltas >= stop_after_deltas:
                return False
        return True

    def vu_loop(self, vu: int, stop_at: float) -> None:
        cfg = self.cfg
        gevent.sleep(max(0.0, cfg.t0 + cfg.ramp * vu / cfg.vus - time.monotonic()))
        port = cfg.upstream_port if cfg.scenario == "floor" else cfg.port
        conn = Connection(HOST, port)
        events = conn
        if cfg.scenario == "load" and cfg.stream_conn == "own":
            events = Connection(HOST, port)
        turn = self.service_turn if cfg.scenario == "load" else self.floor_turn
        try:
            if events is not conn:
                # Open it now, in the ramp, as the POSTs' connection is opened
                # by the first POST: the window sees kept-alive connections.
                try:
                    events.request("GET", "/healthz")
                except HTTPError as exc:
                    self.rec.errors[f"open_{exc.kind}"] += 1
            while time.monotonic() < stop_at:
                self.in_turn.add(vu)
                self.rec.started += 1
                try:
                    turn(conn, events, vu)
                except HTTPError as exc:
                    self.rec.errors[exc.kind] += 1
                    conn.close()
                    events.close()
                    gevent.sleep(0.2)
                finally:
                    self.in_turn.discard(vu)
        finally:
            conn.close()
            events.close()

    def run_loop(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.scenario == "load":
            self.fetch_page_tokens()
        stop_at = cfg.window_end
        vus = [gevent.spawn(self.vu_loop, i, stop_at) for i in range(cfg.vus)]
        gevent.joinall(vus, timeout=max(0.0, stop_at + cfg.drain - time.monotonic()))
        self.rec.cut = len(self.in_turn)
        gevent.killall(vus, block=True, timeout=5)
        return self.rec.result()

    # -- hold -------------------------------------------------------------

    def run_hold(self) -> dict[str, Any]:
        cfg = self.cfg
        self.fetch_page_tokens()
        pace = Pace(cfg.pace.ttft_ms, cfg.hold_gap_ms, 10_000)
        counts: Counter[str] = Counter()
        cancels: dict[str, tuple[str, float]] = {}  # rid -> (cancel url, time)
        finished: Counter[str] = Counter()
        # Seconds from each POST sent to: its 201, the stream's headers, and
        # the first delta.
        timeline: dict[str, list[float]] = {
            "post": [],
            "headers": [],
            "first_delta": [],
        }

        def vu(i: int) -> None:
            gevent.sleep(max(0.0, cfg.t0 + cfg.ramp * i / cfg.vus - time.monotonic()))
            conn = Connection(HOST, cfg.port)
            rid = self.rid("h")
            held = False
            try:
                sent = time.monotonic()
                turn = self.start_turn(conn, i, pace, rid, track=True)
                posted = time.monotonic()
                if turn is None:
                    return
                head = self.open_stream(conn, turn["stream_url"], i)
                if head is None:
                    return
                timeline["post"].append(posted - sent)
                timeline["headers"].append(time.monotonic() - sent)
                stream = Stream(self.rec, sent, conn.chunks(head))
                if self.read_events(conn, stream, stop_after_deltas=1):
                    self.rec.errors["ended_before_release"] += 1
                    return
                timeline["first_delta"].append(time.monotonic() - sent)
                held = True
                counts["held"] += 1
                cancels[rid] = (turn["cancel_url"], 0.0)
                self.read_events(conn, stream)
                finished[stream.finish or "none"] += 1
                if stream.finish != "cancelled":
                    self.rec.errors[f"finish_{stream.finish}"] += 1
            except HTTPError as exc:
                self.rec.errors[exc.kind] += 1
            finally:
                if not held:
                    counts["failed"] += 1
                conn.close()

        vus = [gevent.spawn(vu, i) for i in range(cfg.vus)]
        give_up = min(cfg.t0 + cfg.ramp + max(15.0, cfg.vus / 100), cfg.deadline - 8)
        while counts["held"] + counts["failed"] < cfg.vus:
            if time.monotonic() > give_up:
                log("not every stream opened in time")
                break
            gevent.sleep(0.05)
        emit("held", held=counts["held"])
        _wait_stdin_line(cfg.deadline - 6)
        closes = self._cancel_all(cancels)
        gevent.joinall(vus, timeout=10)
        gevent.killall(vus, timeout=2)
        return {
            **self.rec.result(),
            "held": counts["held"],
            "finish": dict(finished),
            "cancel_latency": closes,
            "timeline": timeline,
        }

    def run_relay_hold(self) -> dict[str, Any]:
        """Hold N streams open through the plain relay; close them on release."""
        cfg = self.cfg
        pace = Pace(cfg.pace.ttft_ms, cfg.hold_gap_ms, 10_000)
        counts: Counter[str] = Counter()
        release = gevent.event.Event()
        timeline: dict[str, list[float]] = {"headers": [], "first_delta": []}

        def vu(i: int) -> None:
            gevent.sleep(max(0.0, cfg.t0 + cfg.ramp * i / cfg.vus - time.monotonic()))
            conn = Connection(HOST, cfg.port)
            held = False
            try:
                sent = time.monotonic()
                head = self.send_completion(conn, self.rid("h"), pace)
                if head is None:
                    return
                timeline["headers"].append(time.monotonic() - sent)
                stream = Stream(self.rec, sent, conn.chunks(head))
                if self.read_completion(stream, stop_after_deltas=1):
                    self.rec.errors["ended_before_release"] += 1
                    return
                timeline["first_delta"].append(time.monotonic() - sent)
                held = True
                counts["held"] += 1
                release.wait()
            except HTTPError as exc:
                self.rec.errors[exc.kind] += 1
            finally:
                if not held:
                    counts["failed"] += 1
                conn.close()

        vus = [gevent.spawn(vu, i) for i in range(cfg.vus)]
        give_up = min(cfg.t0 + cfg.ramp + max(15.0, cfg.vus / 100), cfg.deadline - 8)
        while counts["held"] + counts["failed"] < cfg.vus:
            if time.monotonic() > give_up:
                log("not every stream opened in time")
                break
            gevent.sleep(0.05)
        emit("held", held=counts["held"])
        _wait_stdin_line(cfg.deadline - 6)
        release.set()
        gevent.joinall(vus, timeout=10)
        gevent.killall(vus, timeout=2)
        return {
            **self.rec.result(),
            "held": counts["held"],
            "cancel_latency": [],
            "timeline": timeline,
        }

    def _cancel_all(self, cancels: dict[str, tuple[str, float]]) -> list[float]:
        """POST every cancel URL (a few connections) and time the upstream closes."""
        journal = Journal(self.cfg.upstream_port)
        journal.start()
        work: gevent.queue.Queue[str] = gevent.queue.Queue()
        for rid in cancels:
            work.put(rid)

        def worker() -> None:
            conn = Connection(HOST, self.cfg.port)
            try:
                while not work.empty():
                    rid = work.get()
                    url = cancels[rid][0]
                    cancels[rid] = (url, time.monotonic())
                    response = conn.request("POST", url, {"Accept": "application/json"})
                    if response.status != 202:
                        self.rec.errors[f"cancel_http_{response.status}"] += 1
            except HTTPError as exc:
                self.rec.errors[f"cancel_{exc.kind}"] += 1
            finally:
                conn.close()

        gevent.joinall([gevent.spawn(worker) for _ in range(32)], timeout=60)
        latencies = []
        give_up = min(time.monotonic() + 10, self.cfg.deadline - 3)
        for rid, (_, sent) in cancels.items():
            closed = journal.wait_close(rid, max(0.0, give_up - time.monotonic()))
            if closed is None:
                self.rec.errors["no_upstream_close"] += 1
            else:
                latencies.append(closed - sent)
        journal.stop()
        return latencies

    # -- cancel -----------------------------------------------------------

    def run_cancel(self) -> dict[str, Any]:
        cfg = self.cfg
        self.fetch_page_tokens()
        journal = Journal(cfg.upstream_port)
        journal.start()
        latencies: dict[str, list[float]] = {kind: [] for kind in CANCEL_KINDS}
        errors: dict[str, Counter[str]] = {kind: Counter() for kind in CANCEL_KINDS}
        plan = [kind for _ in range(cfg.cancel_count) for kind in CANCEL_KINDS]

        def one(j: int, kind: str) -> None:
            gevent.sleep(max(0.0, cfg.t0 + cfg.ramp * j / len(plan) - time.monotonic()))
            silent = kind.endswith("_silent")
            pace = (
                Pace(-1, 0, 0)
                if silent
                else Pace(cfg.pace.ttft_ms, cfg.pace.gap_ms, cfg.long_tokens)
            )
            rid = self.rid(kind[0] + kind.split("_")[1][0])
            conn = Connection(HOST, cfg.port)
            try:
                turn = self.start_turn(conn, j, pace, rid, track=True)
                head = (
                    None if turn is None else self.open_stream(conn, turn["stream_url"])
                )
                if turn is None or head is None:
                    errors[kind]["refused"] += 1
                    return
                stream = Stream(self.rec, time.monotonic(), conn.chunks(head))
                wait = -1 if silent else STREAMING_DELTAS_BEFORE_ACT
                if self.read_events(conn, stream, stop_after_deltas=wait):
                    errors[kind]["ended_early"] += 1
                    return
                # Act only once the upstream call is under way.
                if journal.wait_open(rid, 10.0) is None:
                    errors[kind]["upstream_never_opened"] += 1
                    return
                acted = time.monotonic()
                if kind.startswith("vanish"):
                    conn.close()
                else:
                    gevent.spawn(self._post_cancel, turn["cancel_url"], errors[kind])
                    self.read_events(conn, stream)
                    if stream.finish != "cancelled":
                        errors[kind][f"finish_{stream.finish}"] += 1
                limit = 10.0 + (cfg.orphan_seconds if kind.startswith("vanish") else 0)
                closed = journal.wait_close(rid, limit)
                if closed is None:
                    errors[kind]["no_upstream_close"] += 1
                else:
                    latencies[kind].append(closed - acted)
            except HTTPError as exc:
                errors[kind][exc.kind] += 1
            finally:
                conn.close()

        turns = [gevent.spawn(one, j, kind) for j, kind in enumerate(plan)]
        gevent.joinall(turns, timeout=max(0.0, cfg.deadline - time.monotonic() - 5))
        gevent.killall(turns, timeout=2)
        journal.stop()
        return {
            "latency": latencies,
            "errors": {k: dict(v) for k, v in errors.items()},
            "other_errors": dict(self.rec.errors),
        }

    def _post_cancel(self, url: str, errors: Counter[str]) -> None:
        conn = Connection(HOST, self.cfg.port)
        try:
            response = conn.request("POST", url, {"Accept": "application/json"})
            if response.status != 202:
                errors[f"cancel_http_{response.status}"] += 1
        except HTTPError as exc:
            errors[f"cancel_{exc.kind}"] += 1
        finally:
            conn.close()


class Journal:
    """Follow the fake upstream's record of tracked opens and closes."""

    def __init__(self, port: int) -> None:
        self._conn = Connection(HOST, port)
        self._next = 0
        self._seen: dict[tuple[str, str], float] = {}
        self._changed = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._follow)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
        self._conn.close()

    def _follow(self) -> None:
        while True:
            try:
                body = self._conn.request("GET", f"/_bench/journal?from={self._next}")
                reply = body.json()
            except HTTPError:
                gevent.sleep(0.1)
                continue
            if reply["entries"]:
                for rid, kind, at in reply["entries"]:
                    self._seen[(rid, kind)] = at
                self._next = reply["next"]
                changed, self._changed = self._changed, gevent.event.Event()
                changed.set()
            gevent.sleep(0.02)

    def _wait(self, key: tuple[str, str], timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while key not in self._seen:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._changed.wait(left)
        return self._seen[key]

    def wait_open(self, rid: str, timeout: float) -> float | None:
        return self._wait((rid, "open"), timeout)

    def wait_close(self, rid: str, timeout: float) -> float | None:
        return self._wait((rid, "close"), timeout)


def _wait_stdin_line(deadline: float) -> None:
    """Block this greenlet until a line arrives on stdin, or the deadline."""
    fd = sys.stdin.fileno()
    gevent.os.make_nonblocking(fd)
    try:
        with gevent.Timeout(max(0.0, deadline - time.monotonic())):
            while not gevent.os.nb_read(fd, 4096).endswith(b"\n"):
                pass
    except gevent.Timeout:
        log("no release before the deadline")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the Config as JSON")
    args = parser.parse_args(argv)
    cfg = Config.from_json(args.config)
    raise_nofile_limit()
    gc.freeze()
    client = Client(cfg)
    run = {
        "load": client.run_loop,
        "floor": client.run_loop,
        "relay": client.run_loop,
        "hold": client.run_hold,
        "relay_hold": client.run_relay_hold,
        "cancel": client.run_cancel,
    }[cfg.scenario]
    started = os.times()
    try:
        with gevent.Timeout(max(1.0, cfg.deadline - time.monotonic())):
            result = run()
    except gevent.Timeout:
        log("hit its deadline")
        emit("result", data=client.rec.result(), deadline=True)
        return 1
    ended = os.times()
    cpu = ended.user + ended.system - started.user - started.system
    emit("result", data=result, cpu_seconds=cpu, config=asdict(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
