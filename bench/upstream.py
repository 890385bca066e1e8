"""A fake OpenAI-compatible upstream that paces thousands of streams at once.

It answers ``POST /v1/chat/completions`` with ``stream: true`` as the API does:
chunked ``data: {chat.completion.chunk}`` events, a finish chunk, a usage
chunk and ``data: [DONE]``. The marker in the request (see `bench.protocol`)
sets each answer's pace. One greenlet per connection reads, one per answer
writes; a connection closed by the client before its answer ended is
recorded with the time the close was seen.

``GET /_bench/journal?from=k`` returns tracked requests' open and close times
(``time.monotonic()``, comparable across processes on one host) from entry k
on, and the server's counters.

Run: ``python -m bench.upstream --port 9000 [--max-seconds 900]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.server import StreamServer

from bench.procs import raise_nofile_limit
from bench.protocol import Pace
from bench.protocol import parse_marker
from bench.protocol import token_text

STALL_SECONDS = 600.0
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_PREBUILT = 1000

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Cache-Control: no-cache\r\n"
    b"X-Request-Id: req_bench\r\n"
    b"\r\n"
)
_CHUNK_BASE: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion.chunk",
    "created": 1727346168,
    "model": "bench-model",
    "system_fingerprint": "fp_bench",
}


def _event(payload: dict[str, Any]) -> bytes:
    data = json.dumps({**_CHUNK_BASE, **payload}, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        ]
    }


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


ROLE = _chunk(_event(_choice({"role": "assistant", "content": "", "refusal": None})))
TOKENS = [
    _chunk(_event(_choice({"content": token_text(i)}))) for i in range(MAX_PREBUILT)
]
FINISH = _chunk(_event(_choice({}, "stop")))
DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _usage(tokens: int) -> bytes:
    usage = {"prompt_tokens": 24, "completion_tokens": tokens, "total_tokens": 24}
    usage["total_tokens"] += tokens
    return _chunk(_event({"choices": [], "usage": usage}))


@dataclass
class _Request:
    method: str
    target: str
    body: bytes
    rid: str = ""
    track: bool = False
    complete: bool = False


def _parse_request(buf: bytearray) -> tuple[_Request, int] | None:
    """Take one whole request off the front of `buf`, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise ValueError("request head too large")
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    method, target, _ = head[0].split(" ", 2)
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length > MAX_BODY:
        raise ValueError("request body too large")
    total = end + 4 + length
    if len(buf) < total:
        return None
    return _Request(method, target, bytes(buf[end + 4 : total])), total


class Upstream:
    """The fake API: paced answers, a journal of tracked opens and closes."""

    def __init__(self) -> None:
        self.journal: list[tuple[str, str, float]] = []
        self.counters: dict[str, int] = {
            "connections": 0,
            "requests": 0,
            "completed": 0,
            "closed_early": 0,
            "active": 0,
            "max_active": 0,
        }

    def handle(self, sock: socket.socket, _address: Any) -> None:
        """Serve one connection: requests one after another (keep-alive)."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.counters["connections"] += 1
        buf = bytearray()
        writer: gevent.Greenlet | None = None
        current: _Request | None = None
        try:
            while True:
                if writer is None or writer.dead:
                    parsed = _parse_request(buf)
                    if parsed is not None:
                        request, used = parsed
                        del buf[:used]
                        if request.target.startswith("/_bench/"):
                            sock.sendall(self._control(request))
                            continue
                        current = request
                        writer = gevent.spawn(self._answer, sock, request)
                        continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    if current is not None and not current.complete:
                        self._closed_early(current)
                    return
                buf += data
        except ValueError:
            return
        finally:
            if writer is not None:
                writer.kill(block=False)
            sock.close()

    def _closed_early(self, request: _Request) -> None:
        now = time.monotonic()
        self.counters["closed_early"] += 1
        if request.track:
            self.journal.append((request.rid, "close", now))

    def _answer(self, sock: socket.socket, request: _Request) -> None:
        counters = self.counters
        counters["requests"] += 1
        found = parse_marker(request.body)
        if request.method != "POST" or found is None:
            sock.sendall(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b'Content-Length: 30\r\n\r\n{"error":{"message":"marker"}}'
            )
            request.complete = True
            return
        request.rid, pace, request.track = found
        started = time.monotonic()
        if request.track:
            self.journal.append((request.rid, "open", started))
        counters["active"] += 1
        counters["max_active"] = max(counters["max_active"], counters["active"])
        try:
            sock.sendall(HEAD)
            self._stream(sock, pace, started)
            request.complete = True
            counters["completed"] += 1
        except OSError:
            return  # the reader greenlet records the close
        finally:
            counters["active"] -= 1

    @staticmethod
    def _stream(sock: socket.socket, pace: Pace, started: float) -> None:
        if pace.silent:
            gevent.sleep(STALL_SECONDS)
            sock.shutdown(socket.SHUT_RDWR)
            raise OSError("stalled to the end")
        first = started + pace.ttft_ms / 1000
        gap = pace.gap_ms / 1000
        last = pace.tokens - 1
        for i in range(pace.tokens):
            # Keep to the schedule from the start: a late write is not
            # followed by a shortened gap that hides it.
            delay = first + i * gap - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            data = TOKENS[i % MAX_PREBUILT]
            if i == 0:
                data = ROLE + data
            if i == last:
                data += FINISH + _usage(pace.tokens) + DONE
            sock.sendall(data)
        if pace.tokens == 0:
            sock.sendall(FINISH + _usage(0) + DONE)

    def _control(self, request: _Request) -> bytes:
        _, _, query = request.target.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        start = int(params.get("from", "0") or 0)
        body = json.dumps(
            {
                "next": len(self.journal),
                "entries": self.journal[start:],
                "counters": self.counters,
            }
        ).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    upstream = Upstream()
    server = StreamServer(("127.0.0.1", args.port), upstream.handle, backlog=4096)
    server.start()
    print(f"fake upstream on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    # Bounded even if forgotten: stop after max-seconds.
    gevent.sleep(args.max_seconds)
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
