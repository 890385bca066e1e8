"""Time a turn's first word: POST + GET stream_url, or one streamed POST.

    .venv/bin/python -m bench.first_word                 # loopback
    .venv/bin/python -m bench.first_word --rtt-ms 40     # a 40 ms network

Starts chatapp under gunicorn (the demo provider, no delay) and, with
--rtt-ms, a loopback proxy that holds every byte for half the round trip in
each direction, pipelined, as a network does (TCP_NODELAY, as urllib3
sets). Then, on one kept-alive session per route, it times from sending
the POST to reading the first `delta`, over --turns turns each, and prints
p50 and p95 in milliseconds as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

from bench.procs import Children
from bench.procs import free_port
from bench.procs import wait_until
from chatapp.upstream.sse_decoder import SSEDecoder

ROOT = Path(__file__).resolve().parents[1]


class DelayingProxy:
    """Forward 127.0.0.1:port to `upstream`, each byte held `half` seconds."""

    def __init__(self, upstream: int, half: float) -> None:
        self.upstream = upstream
        self.half = half
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for end in (client, server):  # as urllib3 and gunicorn's peers do
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst in ((client, server), (server, client)):
                held: queue.Queue[tuple[float, bytes]] = queue.Queue()
                for pump, end in ((self._read, src), (self._send, dst)):
                    threading.Thread(target=pump, args=(end, held), daemon=True).start()

    def _read(self, src: socket.socket, held: queue.Queue[tuple[float, bytes]]) -> None:
        try:
            while data := src.recv(65536):
                held.put((time.monotonic() + self.half, data))
        except OSError:
            pass  # the other side went away: pass the end on
        held.put((time.monotonic() + self.half, b""))

    @staticmethod
    def _send(dst: socket.socket, held: queue.Queue[tuple[float, bytes]]) -> None:
        try:
            while data := DelayingProxy._due(held):
                dst.sendall(data)
        except OSError:
            pass
        dst.close()

    @staticmethod
    def _due(held: queue.Queue[tuple[float, bytes]]) -> bytes:
        due, data = held.get()
        time.sleep(max(0.0, due - time.monotonic()))
        return data


def first_delta(response: requests.Response) -> None:
    """Read until the first `delta`, then drop the rest."""
    decoder = SSEDecoder()
    for data in response.raw.stream(4096, decode_content=False):
        if any(event.event == "delta" for event in decoder.feed(data)):
            break
    response.close()


def two_requests(http: requests.Session, base: str, token: str) -> float:
    started = time.perf_counter()
    body = {"token": token, "message": "hello"}
    turn = http.post(base + "/api/chat", json=body, timeout=30).json()
    stream = http.get(base + turn["stream_url"], stream=True, timeout=30)
    first_delta(stream)
    return time.perf_counter() - started


def one_request(http: requests.Session, base: str, token: str) -> float:
    started = time.perf_counter()
    response = http.post(
        base + "/api/chat",
        json={"token": token, "message": "hello"},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=30,
    )
    first_delta(response)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    children = Children()
    port = free_port()
    drop = ("CHATAPP_", "OPENAI_", "ANTHROPIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        CHATAPP_BIND=f"127.0.0.1:{port}",
        CHATAPP_DEMO_DELAY_MS="0",
        CHATAPP_RATE_LIMITS="1000000/minute",
        CHATAPP_LOG_LEVEL="warning",
    )
    argv_ = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    try:
        children.start("chatapp", argv_, env=env, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(base), 30, "chatapp")
        if args.rtt_ms:
            base = f"http://127.0.0.1:{DelayingProxy(port, args.rtt_ms / 2000).port}"
        http = requests.Session()
        html = http.get(base + "/", timeout=30).text
        marker = 'name="chatapp-token" content="'
        token = html.split(marker, 1)[1].split('"', 1)[0]
        results = {}
        for name, route in (("post_then_get", two_requests), ("one_post", one_request)):
            route(http, base, token)  # warm the connection and the worker
            times = sorted(route(http, base, token) for _ in range(args.turns))
            results[name] = {
                "p50_ms": round(statistics.median(times) * 1000, 2),
                "p95_ms": round(times[int(len(times) * 0.95) - 1] * 1000, 2),
            }
        print(json.dumps({"turns": args.turns, "rtt_ms": args.rtt_ms, **results}))
    finally:
        children.stop_all()
    return 0


def _up(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
