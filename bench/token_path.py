"""Micro-benchmark: a token's way through one worker, in process, per part.

Two parts the per-chunk benchmark (bench/chunk_path.py) leaves out, each
measured in thread CPU time per token over repeats:

- **read**: a local server streams chunked OpenAI-format events, one per
  write; the upstream's `event_batches` reads and decodes them (network
  read, chunked body, SSE decoder; the server's sends count too);
- **handoff**: a producer greenlet extends a turn's tail one frame at a
  time and a reader greenlet follows it with `read.stream` (the wake-up
  between the two; a `gevent.sleep(0)` per token stands in for the
  producer's network wait, and is measured alone as the baseline).

Point --root at another checkout to compare:

    python -m bench.token_path --root /tmp/before
    python -m bench.token_path
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import importlib  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402

from bench.chunk_path import CHUNK  # noqa: E402


def read_part(streaming: Any, http: Any, tokens: int) -> float:
    """CPU microseconds per token of reading and decoding a local stream."""
    event = CHUNK.encode()
    piece = b"%x\r\n%s\r\n" % (len(event), event)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/chat/completions"

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(tokens):
            conn.sendall(piece)
            gevent.sleep(0)  # one event per read
        conn.sendall(b"0\r\n\r\n")
        conn.close()

    server = gevent.spawn(serve)
    pool = http.upstream_pool(requests.Session(), url)
    began = time.thread_time()
    events = 0
    for batch in streaming.event_batches(
        pool, url, headers={}, body={}, connect_timeout=5
    ):
        events += len(batch)
    took = time.thread_time() - began
    server.join()
    listener.close()
    assert events == tokens, events
    return took / tokens * 1e6


def handoff_part(tail_module: Any, read: Any, tokens: int) -> tuple[float, float]:
    """CPU microseconds per token of a frame handed producer -> reader."""
    tail = tail_module.Tail([b"id: 1\nevent: start\ndata: {}\n\n"])
    frame = b'id: 2\nevent: delta\ndata: {"text":"x"}\n\n'
    got = 0

    def reader() -> None:
        nonlocal got
        for _ in read.stream(
            tail, 0, heartbeat=15.0, wake=2.0, client_gone=lambda: False
        ):
            got += 1

    def producer() -> None:
        for _ in range(tokens):
            tail.extend([frame])
            gevent.sleep(0)
        tail.extend([frame], done=True)

    following = gevent.spawn(reader)
    gevent.sleep(0)
    began = time.thread_time()
    gevent.joinall([gevent.spawn(producer), following])
    took = time.thread_time() - began
    assert got >= tokens, got

    def alone() -> None:
        for _ in range(tokens):
            gevent.sleep(0)

    began = time.thread_time()
    gevent.spawn(alone).join()
    baseline = time.thread_time() - began
    return took / tokens * 1e6, baseline / tokens * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    streaming = importlib.import_module("chatapp.upstream.streaming")
    http = importlib.import_module("chatapp.upstream.http")
    tail_module = importlib.import_module("chatapp.store.tail")
    read = importlib.import_module("chatapp.turns.read")
    reads = [read_part(streaming, http, args.tokens) for _ in range(args.repeats)]
    handoffs = [
        handoff_part(tail_module, read, args.tokens) for _ in range(args.repeats)
    ]
    hand = [h for h, _ in handoffs]
    base = [b for _, b in handoffs]
    print(
        f"{args.root}: read {statistics.median(reads):.2f} us CPU per token "
        f"(best {min(reads):.2f}); handoff {statistics.median(hand):.2f} "
        f"(best {min(hand):.2f}), of it the sleep(0) baseline "
        f"{statistics.median(base):.2f}; {args.tokens} tokens x {args.repeats}"
    )


if __name__ == "__main__":
    main()
